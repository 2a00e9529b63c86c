"""The answer format of report splitting and its validation.

An answer assigns every sentence of a report to one of the 10 regions or to `others`:

    {"abdomen": [sentence, ...], "bone": [...], ..., "trachea and bronchie": [...], "others": [...]}

`ANSWER_SCHEMA` is the JSON schema the LLM's output is constrained to (vLLM structured output) and that
every answer is validated against. `validate_answer` then checks the content against the source report:
every answered sentence is a sentence of the report (nothing invented), and every sentence of the report
is placed exactly once (a sentence that occurs twice in the report is placed twice). Sentences match after
`sentences.sentence_key` (white space and final punctuation do not matter; words do).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from reg2rg.constants import REGIONS
from reg2rg.split.sentences import normalize, sentence_key, split_sentences

OTHERS = "others"
ANSWER_KEYS: tuple[str, ...] = (*REGIONS, OTHERS)

ANSWER_SCHEMA: dict = {
    "type": "object",
    "properties": {key: {"type": "array", "items": {"type": "string"}} for key in ANSWER_KEYS},
    "required": list(ANSWER_KEYS),
    "additionalProperties": False,
}


class AnswerError(ValueError):
    """An answer that cannot be used; `kind` names the check that failed (for failure records and retries)."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(f"{kind}: {message}")


@dataclass
class Split:
    """A validated split: per region the report's sentences in report order (None where none), plus the
    sentences that belong to no region."""

    region_texts: list[str | None]
    others: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"region_texts": list(self.region_texts), "others": list(self.others)}

    @classmethod
    def from_json(cls, data: dict) -> "Split":
        texts = list(data["region_texts"])
        if len(texts) != len(REGIONS):
            raise ValueError(f"region_texts must have {len(REGIONS)} entries")
        return cls(texts, list(data.get("others") or []))


def parse_answer(content: str | None) -> dict:
    """The JSON object of a model's message (a ```json fence is tolerated); AnswerError if it is not one."""
    import jsonschema

    if content is None or not str(content).strip():
        raise AnswerError("empty", "the answer has no content")
    text = str(content).strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[4:] if text.lower().startswith("json") else text
    try:
        data = json.loads(text)
    except ValueError as err:
        raise AnswerError("invalid JSON", str(err)) from None
    validator = jsonschema.Draft202012Validator(ANSWER_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(top level)"
        raise AnswerError("schema", f"{where}: {error.message}")
    return data


def validate_answer(report: str, data: dict) -> Split:
    """Check a parsed answer against the report's sentences; return the Split or raise AnswerError
    (`invented sentence`, `sentence placed twice`, `sentence missing`)."""
    source = split_sentences(report)
    by_key: dict[str, list[int]] = {}
    for i, s in enumerate(source):
        by_key.setdefault(sentence_key(s), []).append(i)
    available = Counter({k: len(v) for k, v in by_key.items()})
    used: Counter = Counter()
    placed: dict[int, str] = {}  # source sentence index -> answer key
    for key in ANSWER_KEYS:
        for answered in data[key]:
            k = sentence_key(answered)
            if not k:
                continue  # an empty string places nothing
            if k not in available:
                raise AnswerError("invented sentence",
                                  f"{key!r} holds {normalize(answered)[:200]!r}, which is not a sentence of the report")
            if used[k] >= available[k]:
                raise AnswerError("sentence placed twice",
                                  f"{normalize(answered)[:200]!r} is placed more often than the report holds it "
                                  f"({available[k]}x)")
            placed[by_key[k][used[k]]] = key
            used[k] += 1
    missing = [source[i] for i in range(len(source)) if i not in placed]
    if missing:
        raise AnswerError("sentence missing", f"{len(missing)} sentence(s) not placed, first: {missing[0][:200]!r}")
    groups: dict[str, list[str]] = {key: [] for key in ANSWER_KEYS}
    for i, s in enumerate(source):  # report order, source wording
        groups[placed[i]].append(s)
    return Split([" ".join(groups[r]) or None for r in REGIONS], groups[OTHERS])


def split_from_assignment(report: str, assignment: list[str]) -> Split:
    """A Split from one answer key per sentence of `split_sentences(report)` (used by the rules splitter)."""
    source = split_sentences(report)
    if len(assignment) != len(source):
        raise ValueError(f"{len(assignment)} assignments for {len(source)} sentences")
    groups: dict[str, list[str]] = {key: [] for key in ANSWER_KEYS}
    for s, key in zip(source, assignment):
        if key not in groups:
            raise ValueError(f"unknown answer key {key!r}; known: {', '.join(ANSWER_KEYS)}")
        groups[key].append(s)
    return Split([" ".join(groups[r]) or None for r in REGIONS], groups[OTHERS])


def answer_from_split_groups(report: str, assignment: list[str]) -> dict:
    """The answer JSON (ANSWER_SCHEMA) for one key per sentence: what a perfect model would return."""
    source = split_sentences(report)
    out: dict[str, list[str]] = {key: [] for key in ANSWER_KEYS}
    for s, key in zip(source, assignment):
        out[key].append(s)
    return out
