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
