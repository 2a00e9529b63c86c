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
