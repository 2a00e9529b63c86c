"""Errors the user can act on. Each message names the file and what is wrong with it."""


class Reg2RGError(Exception):
    """Base class: the command line prints the message (no traceback) and exits with status 2."""


class InputError(Reg2RGError):
    """An input file or folder is unreadable, malformed or inconsistent."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(Reg2RGError):
    """The workflow or model configuration is missing a key or holds a bad value."""


def check_unique_ids(ids, path, what: str = "case_id") -> None:
    """InputError naming `path` and every id that occurs more than once (the first ten, then how many more)."""
    from collections import Counter

    dup = sorted(str(i) for i, n in Counter(str(i) for i in ids).items() if n > 1)
    if dup:
        more = f" and {len(dup) - 10} more" if len(dup) > 10 else ""
        raise InputError(path, f"{what} not unique: {', '.join(dup[:10])}{more} given more than once")
