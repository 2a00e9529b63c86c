"""The versioned prompt of the LLM report splitter.

Change the wording only together with PROMPT_VERSION: the version is part of every cache key, so answers
obtained with another prompt are never reused.

The user message carries the report's sentences (from `sentences.split_sentences`) as a JSON array after
the line `SENTENCES_MARKER`, so that the model copies them verbatim and a test server can read them back.
"""
from __future__ import annotations

import json

from reg2rg.constants import REGIONS
from reg2rg.split.answer import ANSWER_KEYS, OTHERS
from reg2rg.split.sentences import split_sentences

PROMPT_VERSION = "ctrg-split-v1"
SENTENCES_MARKER = "Report sentences (JSON array, in report order):"

SYSTEM_PROMPT = (
    "You are a radiologist who organises chest CT reports by anatomical region. You never rewrite, "
    "summarise, translate or add text: you only sort the report's own sentences."
)

REGION_GUIDE = {
    "abdomen": "upper abdominal organs in the scan: liver, gallbladder, bile ducts, spleen, pancreas, "
               "kidneys, adrenal glands, stomach, bowel, abdominal fluid",
    "bone": "bones and joints: vertebrae, ribs, sternum, clavicles, scapulae, fractures, lytic or sclerotic "
            "lesions, degenerative changes, scoliosis",
    "breast": "breasts and axillary soft tissue of the breast, breast implants",
    "esophagus": "esophagus, hiatal hernia, nasogastric tubes in the esophagus",
    "heart": "heart size and contour, cardiac chambers, pericardium, pericardial effusion, coronary "
             "calcification, valves",
    "lung": "lung parenchyma: nodules, masses, consolidation, ground glass, emphysema, atelectasis, "
            "fibrosis, interstitial changes, bronchiectasis inside the lungs",
    "mediastinum": "mediastinum: great vessels (aorta, pulmonary artery, vena cava), lymph nodes in the "
                   "mediastinum and hila, thymus, mediastinal fat, catheters and ports in the vessels",
    "pleura": "pleura and pleural spaces: effusion, thickening, pneumothorax, pleural plaques",
    "thyroid": "thyroid gland",
    "trachea and bronchie": "trachea and main bronchi: position, patency, lumen, wall",
}
assert tuple(REGION_GUIDE) == REGIONS


def build_messages(report: str) -> list[dict]:
    """Chat messages asking for the report's sentences assigned to the 10 regions plus `others`."""
    sentences = split_sentences(report)
    regions = "\n".join(f"- {r}: {REGION_GUIDE[r]}" for r in REGIONS)
    keys = ", ".join(json.dumps(k) for k in ANSWER_KEYS)
    user = (
        "Assign every sentence of the chest CT report below to exactly one anatomical region.\n\n"
        f"Regions:\n{regions}\n- {OTHERS}: anything that belongs to no region above (technique, comparison, "
        "recommendations, general impressions, body wall and soft tissue).\n\n"
        "Rules:\n"
        "1. Copy each sentence verbatim, exactly as given, into the list of its region.\n"
        "2. Place every sentence exactly once; a sentence about several regions goes to the region it says "
        "most about.\n"
        "3. Do not change, shorten, merge, split or invent sentences.\n"
        "4. Keep the report order within each list. Leave a list empty when no sentence belongs there.\n\n"
        f"Answer with one JSON object with exactly these keys: {keys}; each value is a list of sentences.\n\n"
        f"{SENTENCES_MARKER}\n{json.dumps(sentences, ensure_ascii=False)}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def repair_message(previous_answer: str | None, problem: str) -> list[dict]:
    """The follow-up turn sent when an answer failed validation: the answer and what was wrong with it."""
    return [
        {"role": "assistant", "content": previous_answer or ""},
        {"role": "user", "content": f"That answer is not usable ({problem}). Answer again following every rule: "
                                    "each sentence of the report copied verbatim, each placed exactly once."},
    ]


def sentences_from_messages(messages: list[dict]) -> list[str]:
    """The sentence list inside a request built by build_messages (for test servers)."""
    for m in messages:
        content = m.get("content") or ""
        if m.get("role") == "user" and SENTENCES_MARKER in content:
            return json.loads(content.split(SENTENCES_MARKER, 1)[1].strip())
    raise ValueError("no sentence list in the messages")
