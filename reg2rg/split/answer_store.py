"""A content-addressed cache of split results: one JSON file per (report text, prompt version, model).

A result is written the moment it is known (atomically), so that a rerun asks nothing already answered and
an interrupted run resumes where it stopped. Failed attempts are stored too (with their reason and raw
answer) but by default a later run tries them again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reg2rg.files import write_json_atomic


def cache_key(report: str, prompt_version: str, model: str, splitter: str = "llm") -> str:
    """sha256 over the exact report text, the prompt version, the model name and the splitter kind."""
    payload = json.dumps({"report": report, "prompt_version": prompt_version, "model": model,
                          "splitter": splitter}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class SplitCache:
    """`{root}/{key[:2]}/{key}.json` per result; `root=None` keeps nothing."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None

    def path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self.path(key)
        if p is None or not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a damaged entry is as good as none: it is asked again and overwritten

    def put(self, key: str, record: dict) -> None:
        p = self.path(key)
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(p, record, ensure_ascii=False, indent=1)
