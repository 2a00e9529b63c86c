"""The Reg2RG prompt and the region-report alignment (RRA) target, built and parsed in one place.

Target form, per region in the order given: "The region {i} is {area}: {region text} " (i is 1-based).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from reg2rg.constants import REGIONS

RRA_PREFIX = "The region {index} is {area}: "
_AREAS = "|".join(sorted((re.escape(r) for r in REGIONS), key=len, reverse=True))
# A prefix names an area; an unknown area word is still parsed (recognition then counts it wrong).
_PREFIX_RE = re.compile(r"The region (\d+) is ([A-Za-z][A-Za-z ]*?)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class RegionText:
    index: int  # 1-based region index as written in the prompt
    area: str  # the area name the text gives for that index (lower-cased)
    text: str  # the region report without its prefix


def build_rra_target(items: list[tuple[int, str, str]]) -> str:
    """Join (index, area, text) triples into one RRA target string, in the order given."""
    return "".join(RRA_PREFIX.format(index=i, area=a) + t.strip() + " " for i, a, t in items)


def parse_rra(text: str) -> list[RegionText]:
    """Split an RRA-form report into its regions; text before the first prefix is ignored.

    Returns [] for a plain report with no prefix.
    """
    matches = list(_PREFIX_RE.finditer(text))
    out = []
    for m, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() if nxt is not None else len(text)
        out.append(RegionText(int(m.group(1)), m.group(2).strip().lower(), text[m.end():end].strip()))
    return out


def strip_rra(text: str) -> str:
    """The report with every "The region N is X: " prefix removed (text otherwise unchanged)."""
    parts = parse_rra(text)
    if not parts:
        return text.strip()
    return " ".join(p.text for p in parts if p.text)
