"""The offline splitter: each sentence of a report goes to the region its keywords point to, or to `others`.

No model and no network: the default for the synthetic `demo_ctrg` data set and a baseline for real
reports. Each region has weighted patterns (a specific term weighs 3, a location word 1 or 2); a sentence
goes to the region with the highest total, ties to the region named first in the sentence; a sentence
matching nothing goes to `others`. Output: the same Split as the LLM splitter.
"""
from __future__ import annotations

import re

from reg2rg.constants import REGIONS
from reg2rg.split.answer import OTHERS, Split, split_from_assignment
from reg2rg.split.sentences import split_sentences

RULES_VERSION = "rules-v1"

_PATTERNS: dict[str, list[tuple[str, int]]] = {
    "trachea and bronchie": [
        (r"\btrache(a|al)\b", 3), (r"\bmain bronch", 3), (r"\bbronch(i|us|ie)\b", 2), (r"\bcarina\b", 2),
        (r"\bendotracheal\b", 3),
    ],
    "mediastinum": [
        (r"mediastin", 3), (r"lymph ?nodes?\b", 3), (r"lymphadenopath", 3), (r"\blaps?\b", 3), (r"\baort", 3),
        (r"pulmonary (artery|arteries|trunk)", 3), (r"vena cava", 3), (r"vascular structure", 2),
        (r"\bhil(ar|um|a)\b", 2), (r"thymus", 3), (r"paratracheal|subcarinal|prevascular|aortopulmonary", 2),
        (r"brachiocephalic|jugular|subclavian", 2), (r"catheter|\bport\b", 2), (r"atherom|atheroscler", 3),
        (r"arterial wall", 3), (r"\bvessels?\b", 1),
    ],
    "heart": [
        (r"\bheart\b", 3), (r"cardiomegaly|cardiac|cardiothoracic|\bCTR\b", 3), (r"pericardi", 3), (r"coronary", 3),
        (r"\batri(a|al|um)\b|ventric", 1), (r"\bvalv", 2), (r"myocard", 3),
    ],
    "thyroid": [(r"thyroid", 3)],
    "esophagus": [(r"esophag|oesophag", 3), (r"hiatal hernia|hiatus hernia", 3), (r"\bhiatus\b", 2),
                  (r"nasogastric", 2)],
    "lung": [
        (r"\blungs?\b", 2), (r"pulmonary", 1), (r"parenchym", 1), (r"nodul", 3), (r"consolidat", 3),
        (r"ground[- ]?glass", 3), (r"emphysem", 3), (r"atelecta", 3), (r"bronchiectasis", 3), (r"fibro", 2),
        (r"interstitial", 3), (r"\blobes?\b", 1), (r"infiltrat", 3), (r"\bbullae?\b|bullous", 3),
        (r"aeration|aerated", 3), (r"opacit", 2), (r"septal", 2), (r"mosaic", 3), (r"peribronchial", 3),
        (r"bronchogram", 2), (r"fissure", 2), (r"\bapex|apices|apical", 1), (r"pleuroparenchymal", 3),
        (r"bronchiol", 3), (r"pneumoni", 3),
    ],
    "pleura": [(r"pleura", 3), (r"effusion", 2), (r"pneumothorax|hydrothorax|hydropn|hemothorax", 3),
               (r"hemithora", 2), (r"costophrenic", 3)],
    "abdomen": [
        (r"abdom", 3), (r"liver|hepat", 3), (r"splen|spleen", 3), (r"pancrea", 3), (r"kidney|renal", 3),
        (r"adrenal", 3), (r"gall ?bladder|bile|biliary|cholecyst", 3), (r"stomach|gastric", 2),
        (r"bowel|colon|intestin|ileal|ileum|jejun", 3), (r"cholelith|urinary bladder|\bbladder\b", 3),
        (r"ascites", 3), (r"\bportal\b", 2),
    ],
    "bone": [
        (r"\bbon(e|es|y)\b|osseous", 3), (r"vertebr", 3), (r"\bribs?\b", 3), (r"stern(um|al|otomy)", 3),
        (r"\bspin(e|al)\b", 2), (r"scolio|kypho|lordo", 3), (r"osteophyt|spondyl", 3),
        (r"fracture", 3), (r"lytic|sclerotic|blastic", 2), (r"clavic|scapul|humer", 3), (r"corpus height", 3),
        (r"degenerative", 1), (r"\bdis(c|k)\b", 1),
    ],
    "breast": [(r"breast|mammar|gyn(a)?ecomastia", 3)],
}
assert set(_PATTERNS) == set(REGIONS)
# Specific phrases that override the location words around them.
_OVERRIDES = [
    (re.compile(r"pericardial (effusion|fluid|thickening)", re.I), "heart", 4),
    (re.compile(r"pleural (effusion|fluid|thickening|plaque)", re.I), "pleura", 4),
    (re.compile(r"(hiatal|hiatus) hernia", re.I), "esophagus", 4),
]
_COMPILED = {r: [(re.compile(p, re.I), w) for p, w in pats] for r, pats in _PATTERNS.items()}


def assign_sentence(sentence: str) -> str:
    """The region (or `others`) a sentence belongs to by keywords."""
    scores: dict[str, int] = {}
    first: dict[str, int] = {}
    for region, pats in _COMPILED.items():
        for pat, weight in pats:
            for m in pat.finditer(sentence):
                scores[region] = scores.get(region, 0) + weight
                first[region] = min(first.get(region, m.start()), m.start())
    for pat, region, weight in _OVERRIDES:
        m = pat.search(sentence)
        if m:
            scores[region] = scores.get(region, 0) + weight
            first[region] = min(first.get(region, m.start()), m.start())
    if not scores:
        return OTHERS
    return max(scores, key=lambda r: (scores[r], -first[r]))


def rules_split(report: str) -> Split:
    """Split a report by keywords: every sentence placed once, in report order."""
    return split_from_assignment(report, [assign_sentence(s) for s in split_sentences(report)])
