"""Small file helpers shared by the stages."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable


def sha256_files(paths: Iterable[str | Path]) -> str:
    """sha256 of the files' bytes, read in order (one file: its usual sha256)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return sha256_files([path])


def read_json(path: str | Path, what: str = "file", hint: str = ""):
    """A JSON file's content; InputError naming the file when it is missing or not valid JSON."""
    import json

    from reg2rg.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found{f' ({hint})' if hint else ''}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(path, f"not valid JSON: {err}") from None
