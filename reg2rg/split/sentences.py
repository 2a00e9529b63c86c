"""Sentence segmentation of free-text chest CT reports.

One function, `split_sentences`, used everywhere a report is cut into sentences: the prompt the LLM
splitter sends, the validation of its answers and the rules splitter. The same report always gives the
same list, so an answer can be checked sentence by sentence against the source.

A sentence ends at `.`, `!` or `?` followed by white space (not inside a number such as `3.5 mm`, not
after a known abbreviation such as `e.g.` or `No.` before a digit). Quotation marks and bullets (`"`,
`•`), which CT-RATE-style impressions use as separators, also end a sentence and are dropped. White space
inside a sentence is collapsed to single spaces; empty pieces are dropped.
"""
from __future__ import annotations

import re

# Lower-cased words that end with a period without ending the sentence.
ABBREVIATIONS = frozenset({
    "e.g", "i.e", "vs", "dr", "approx", "cf", "fig", "nr", "resp", "incl",
})
_SEPARATORS = re.compile(r'\s*["“”•]+\s*')
_END = re.compile(r"([.!?]+)(\s+)")


def normalize(text: str) -> str:
    """Collapse white space and strip: the form in which sentences are compared."""
    return " ".join(str(text).split())


def _ends_sentence(piece: str, following: str) -> bool:
    words = piece.rstrip(".!?").split()
    last = words[-1].lower() if words else ""
    if piece.endswith(".") and last in ABBREVIATIONS:
        return False
    if piece.endswith(".") and last == "no" and following[:1].isdigit():  # "No. 4"
        return False
    return True


def split_sentences(report: str | None) -> list[str]:
    """The report's sentences in order (see the module docstring). None or blank gives []."""
    if report is None:
        return []
    out: list[str] = []
    for block in _SEPARATORS.split(str(report)):
        block = normalize(block)
        if not block:
            continue
        start = 0
        for m in _END.finditer(block + " "):
            end = m.end(1)
            piece = block[start:end].strip()
            following = block[m.end():]
            if piece and _ends_sentence(piece, following):
                out.append(piece)
                start = m.end()
        rest = block[start:].strip()
        if rest:
            out.append(rest)
    return [s for s in (normalize(s) for s in out) if s and any(ch.isalnum() for ch in s)]


def sentence_key(sentence: str) -> str:
    """Key under which an answered sentence matches a source sentence: white space collapsed, trailing
    punctuation and surrounding quotes dropped, case kept. A model that drops a final period still
    matches; one that changes a word does not."""
    return normalize(sentence).strip(" \"'“”").rstrip(".!?;:, ").strip()
