"""Report labelers: the 18 CT-RATE abnormalities (reg2rg.constants.ABNORMALITY_LABELS) from report text.

- ``rules`` (:class:`RulesLabeler`): offline, written for chest CT report language (findings and impression
  as CT-RATE writes them): clinical synonyms per label, negation with a scope bounded by the sentence or
  clause ("no X or Y", "X was not detected", "no evidence of X", "no ... were detected", "X has resolved"),
  affirmed uncertainty ("possible X", "X cannot be excluded" count as present), anatomical vetoes (a thyroid
  nodule is not a lung nodule).
- ``radbert`` (:class:`RadBertLabeler`): the CT-CLIP text classifier the paper used: RadBERT-RoBERTa-4m
  (transformers RobertaModel) with a linear 768 -> 18 head on the pooler output, sigmoid >= 0.5, from the
  published ``RadBertClassifier.pth`` state dict and a local RadBERT folder (config and tokenizer).

Both have ``label(texts) -> np.ndarray`` of shape (n, 18), dtype int8, columns in ABNORMALITY_LABELS order.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from reg2rg.constants import ABNORMALITY_LABELS
from reg2rg.errors import InputError

log = logging.getLogger(__name__)

LABELS = ABNORMALITY_LABELS


class Labeler(Protocol):
    name: str

    def label(self, texts: Sequence[str]) -> np.ndarray: ...

    def describe(self) -> dict: ...


# =========================================================================================================
# Rules labeler
# =========================================================================================================
# Text is lower-cased and normalised (see _normalise) before any pattern below applies.

# Words a finding is "seen" with; used by negation cues.
_SEEN = (r"(?:detected|observed|seen|noted|identified|found|visualized|visualised|visible|present|evident|"
         r"apparent|encountered|demonstrated|shown|monitored|determined|depicted|distinguished|appreciated|"
         r"recognized|recognised|described|reported|considered|followed|revealed|traced)")

# Negation cues that look forward ("no X", "without X", "no evidence of X").
_PRE_NEG = re.compile(
    r"\b(?:no|without|absence of|absent|free of|negative for|neither|nor|none of|not any|not an?|"
    r"no evidence of|no signs? of|no findings? (?:compatible|consistent) with|ruled out|rule out|"
    r"excluding|excluded)\b")
# Cues that look back over their clause ("X was not detected", "X is absent", "X has resolved").
_POST_NEG = re.compile(
    r"\b(?:(?:is|are|was|were|has been|have been|had been|could be|can be|be|being)\s+)?"
    r"(?:not|n't|never)\s+(?:be\s+|been\s+|clearly\s+|definitely\s+|significantly\s+|seen\s+or\s+)?" + _SEEN +
    r"|\b(?:is|are|was|were)\s+(?:absent|not present|not available|none)\b"
    r"|\b(?:has|have|had)?\s*(?:completely\s+|totally\s+)?(?:disappeared|resolved|regressed completely)\b"
    r"|\b(?:completely|totally|fully)\s+(?:regressed|resolved|disappeared)\b"
    r"|\bno longer\b"
    r"|\b(?:did|does|do)\s+not\s+(?:show|have|contain|develop|exist|appear)\b"
    r"|\bnot\s+(?:compatible|consistent)\s+with\b")
# Cue look-alikes that negate nothing: "no change", "no significant difference", "cannot be excluded".
_PSEUDO_NEG = re.compile(
    r"\b(?:no|without|not)\s+(?:\w+\s+){0,2}?(?:change|changes|difference|differences|progression|"
    r"regression|interval change|further|only|doubt)\b"
    r"|\b(?:no|without|not)\s+(?:\w+\s+){0,2}?(?:increase|decrease|growth|reduction)\w*\s+(?:in\s+)?(?:the\s+)?"
    r"(?:\w+\s+)?(?:size|sizes|dimensions?|number|extent|diameters?|volume)\b"
    r"|\b(?:cannot|can not|could not|can't|not)\s+(?:be\s+)?(?:excluded|ruled out|rule out|exclude)\b"
    r"|\bno\s+(?:contrast|iv contrast|intravenous contrast)\b"
    r"|\bnot\s+(?:be\s+)?(?:evaluated|assessed|distinguished|differentiated|separated)\b"
    r"|\b(?:is|are|was|were)\s+not\s+given\b"
    r"|\bwithout\s+(?:contrast|iv|intravenous)\b")

# Words that always open a new clause (a negation never crosses them).
_CLAUSE_WORD = re.compile(
    r"\b(?:but|however|although|though|whereas|while|except|apart from|other than|besides|yet|instead|which|"
    r"whose|where|in addition|additionally|also|accompanied by|along with)\b")
# A finite verb: once a clause has one (after its last forward cue), ", " or " and " starts a new clause.
_FINITE = re.compile(r"\b(?:is|are|was|were|has|have|had)\b")
_JOIN = re.compile(r",\s*(?:and\s+)?|\s+and\s+|\s+with\s+")


def _normalise(text: str) -> str:
    t = str(text).lower()
    t = t.replace("\u2019", "'").replace("\u2018", "'")
    t = re.sub(r"[\"\u201c\u201d\u2022\u00b7\u25aa\u25cf*]+", " . ", t)  # quotes and bullets end items
    t = re.sub(r"\bnon[- ](?=[a-z])", "non", t)  # non-calcified -> noncalcified
    t = re.sub(r"(?<=[a-z])[-/](?=[a-z])", " ", t)  # effusion-thickening -> effusion thickening
    t = re.sub(r"\bpleural parenchymal\b", "pleuroparenchymal", t)
    t = re.sub(r"\s+", " ", t)
    return t


_SENT_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|[;:!?\n()]|\.(?=\s|$)")


def sentences(text: str) -> list[str]:
    """Lower-cased, normalised sentences (and list items) of a report."""
    return [s.strip(" ,") for s in _SENT_SPLIT.split(_normalise(text)) if s.strip(" ,")]


def clauses(sent: str) -> list[tuple[int, int]]:
    """Character spans of a sentence's clauses.

    A clause ends before a clause word (but, however, which, ...), and at ", " / " and " / " with " when
    the clause so far holds a finite verb after its last forward negation cue and what follows has a verb
    of its own or opens with a negation or "there": "no X, Y or Z was detected" stays one clause, "X is
    seen, no Y" and "no X was detected and Y is seen" are two, "there is no X and Y" and "no X is seen in
    size and appearance" stay one.
    """
    cuts = {0, len(sent)}
    for m in _CLAUSE_WORD.finditer(sent):
        cuts.add(m.start())
    start = 0
    for m in _JOIN.finditer(sent):
        seg_start = max(c for c in cuts if c <= m.start())
        seg_start = max(seg_start, start)
        seg = sent[seg_start:m.start()]
        cues = [c.end() for c in _PRE_NEG.finditer(seg)]
        last_cue = cues[-1] if cues else 0
        nxt = sent[m.end():]
        nxt = nxt[:_JOIN.search(nxt).start()] if _JOIN.search(nxt) else nxt
        new_clause = re.match(r"(?:there|it|this|these|they)\s+(?:is|are|was|were|has|have)\b", nxt)
        if new_clause or (_FINITE.search(seg, last_cue) and (_FINITE.search(nxt) or _PRE_NEG.match(nxt)
                                                             or re.match(r"(?:there|it|this|these)\b", nxt))):
            cuts.add(m.end())
            start = m.end()
    cuts = sorted(cuts)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _negated_spans(sent: str) -> list[tuple[int, int]]:
    """Character spans of a sentence that a negation cue covers: from a forward cue to the end of its
    clause, and from a clause's start to a backward cue."""
    spans = []
    pseudo = [m.span() for m in _PSEUDO_NEG.finditer(sent)]

    def is_pseudo(pos):
        return any(a <= pos < b for a, b in pseudo)

    for a, b in clauses(sent):
        for m in _PRE_NEG.finditer(sent, a, b):
            if not is_pseudo(m.start()):
                spans.append((m.start(), b))
                break
        for m in _POST_NEG.finditer(sent, a, b):
            if not is_pseudo(m.start()):
                spans.append((a, m.end()))
    return spans


def _in_spans(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in spans)


@dataclass(frozen=True)
class Rule:
    """One label: a mention pattern, optional context that must be in the same sentence, and vetoes.

    A sentence votes for the label when a mention is found that no negation covers, the sentence has the
    required context (anywhere in it, not negated), and no veto pattern matches within `veto_window`
    characters of the mention.
    """
    label: str
    mention: re.Pattern
    context: re.Pattern | None = None
    veto: re.Pattern | None = None
    veto_window: int = 60
    veto_after_only: bool = False  # the veto pattern is matched from the mention's end only
    veto_before_only: bool = False  # the veto pattern is matched on the text just before the mention
    check: Callable[[str, re.Match], bool] | None = None


def _rx(*alternatives: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


_NOT_LUNG_OPACITY = (r"\b(?:bone|osseous|vertebra\w*|corpus|liver|hepatic|spleen|splenic|kidney|renal|adrenal|"
                     r"thyroid|breast|subcutaneous|soft tissue|fat|fatty|calculus|calculi|stone|sludge|"
                     r"gallbladder|pancrea\w*|mediastin\w*|thymic|thymus|perirenal|muscle|skin)\b")

_CALC = r"(?:calcif\w*|atherom\w*|atheroscl\w*|plaques?)"
_ARTERY = (r"(?:\baort(?:a|ae|ic)\b|\barch\b|\barcus\b|\barter\w*|\bvascular\b|\bvessels?\b|\bcarotid|"
           r"\bsubclavian|\bbrachiocephalic|\biliac|\binnominate|\btruncus|\bceliac|\bmesenteric)")
_OTHER_ARTERY = re.compile(r"\baort(?:a|ae|ic)\b|\barch\b|\barcus\b|\bcarotid|\bsubclavian|\bbrachiocephalic|"
                           r"\biliac|\binnominate|\btruncus|\bceliac|\bmesenteric|\bvascular\b|\bvessels?\b|"
                           r"\bfemoral|\brenal arter|\bmain branches\b")

RULES: tuple[Rule, ...] = (
    Rule("Medical material", _rx(
        r"\bcatheters?\b", r"\bstents?\b", r"\bpacemakers?\b", r"\bpace maker\b", r"\bprosthe\w+",
        r"\bsternotomy\b", r"\bsternal (?:wires?|sutures?)\b", r"\bwires?\b", r"\b(?:surgical |metallic )?clips?\b",
        r"\bport\b", r"\bchest tubes?\b", r"\bdrain(?:age)?\b(?! into)", r"\bendotracheal\b", r"\bnasogastric\b",
        r"\btracheostomy\b", r"\bcannula\w*\b", r"\bcoils?\b", r"\b(?:bypass |vascular |stent )?grafts?\b", r"\bcabg\b",
        r"\bvalve replacement\b", r"\bmetallic\b", r"\bmetal\w*\b", r"\b(?:cardiac|cochlear|electronic|metallic|breast) implant\w*\b", r"\bfixators?\b",
        r"(?<!contrast )(?<!contrast agent )\bmaterials?\b(?! (?:is|was|were|are) not given)", r"\bpeg\b", r"\bscrews?\b",
        r"\b(?:fixation|osteosynthesis) (?:material|device|screw|plate)s?\b", r"\bsutures?\b", r"\bbattery\b", r"\bleads?\b(?= (?:extend|in|of|is|are|to))",
        r"\bicd\b", r"\bcardiac device\b", r"\bvertebroplasty\b", r"\bkyphoplasty\b", r"\bcement\b",
        r"\bfilter\b", r"\bsurgical material\b", r"\bforeign bod\w+\b", r"\bmedical (?:device|material)\w*\b",
        r"\bembolization material\b", r"\bstaples?\b", r"\bring\b(?= (?:is|are|in|of))"),
        veto=re.compile(r"\b(?:lead to|leads to|no contrast|wire ?like|plate ?like|platelike|port of|portal)\b"),
        veto_window=15),
    Rule("Arterial wall calcification", _rx(
        _CALC + r"(?:\s+\w+){0,8}?\s+" + _ARTERY,
        _ARTERY + r"(?:\s+\w+){0,8}?\s+" + _CALC,
        r"\batherosclero\w+", r"\batheromatous\b", r"\baortic (?:wall )?calcif\w*"),
        veto=re.compile(r"^\W*(?:\w+\W+){0,1}valve"), veto_window=12, veto_after_only=True,
        check=lambda s, m: not _only_coronary(s, m)),
    Rule("Cardiomegaly", _rx(
        r"\bcardiomegal\w*", r"\bcardiac enlargement\b",
        r"\b(?:heart|cardiac)(?: \w+){0,3} (?:is |was |are |were )?(?:\w+ ){0,2}(?:enlarged|increased|larger|"
        r"grow|expanded|widened|big)\w*",
        r"\benlarge\w* (?:of the )?(?:heart|cardiac)\b", r"\b(?:heart|cardiac) (?:size|volume|silhouette|"
        r"contour)s? (?:\w+ ){0,3}(?:increase|enlarge)\w*",
        r"\bincrease\w* in (?:the )?(?:heart|cardiac) (?:size|dimension|volume|diameter)s?",
        r"\bcardiothoracic (?:index|ratio) (?:\w+ ){0,3}(?:increase|high|elevat|above)\w*",
        r"\bctr (?:\w+ ){0,2}(?:increase|high|elevat|above)\w*",
        r"\bincrease\w* (?:in )?(?:the )?(?:cardiothoracic|ctr)\b",
        r"\b(?:heart|cardiac) (?:\w+ ){0,3}(?:dimensions|sizes?) (?:\w+ ){0,2}(?:increase|enlarge)\w*"),
        veto=re.compile(r"\bnormal\b|\bnatural\b|\bwithin normal\b"), veto_window=25),
    Rule("Pericardial effusion", _rx(r"\bhydropericard\w*", r"\bpericardial tamponade\b"),),
    Rule("Pericardial effusion", _rx(r"\beffusions?\b", r"\bfluid\b", r"\bcollections?\b"),
         check=lambda s, m: _fluid_site(s, m) == "pericardium"),
    Rule("Coronary artery wall calcification", _rx(
        _CALC + r"(?:\s+\S+){0,16}?\s+(?:coronar\w*|lad|lcx|rca|circumflex|left anterior descending)",
        r"\b(?:coronar\w*|lad|lcx|rca|circumflex)(?:\s+\S+){0,12}?\s+" + _CALC)),
    Rule("Hiatal hernia", _rx(
        r"\bhiat\w* hernia\w*", r"\bhernia\w*(?: \w+){0,6} (?:hiatus|hiatal|esophageal hiatus)",
        r"\bhiatus hernia\b", r"\bhiatal\b(?: \w+){0,3} herniation", r"\bparaesophageal hernia\w*",
        r"\b(?:stomach|gastric)(?: \w+){0,6} herniat\w*", r"\bherniat\w*(?: \w+){0,4} (?:stomach|gastric)",
        r"\bsliding (?:type )?hernia\w*"),
        check=lambda s, m: not re.search(r"\b(?:inguinal|umbilical|incisional|ventral|femoral|morgagni|bochdalek)\b", s)),
    Rule("Hiatal hernia", _rx(r"\bhernia\w*"), check=lambda s, m: bool(re.search(
        r"\b(?:esophag\w*|oesophag\w*|gastroesophageal|cardia|hiat\w*)\b", s)) and not re.search(
        r"\b(?:inguinal|umbilical|incisional|ventral|femoral|morgagni|bochdalek)\b", s)),
    Rule("Lymphadenopathy", _rx(
        r"\blymphadenopath\w*", r"\blaps?\b", r"\blymph ?nodes?\b", r"\blymph ?nod\w*", r"\badenopath\w*",
        r"\blymph node conglomerat\w*", r"\blns?\b"),
veto=re.compile(r"\b(?:intra ?pulmonary|intra ?parenchymal|perifissural|fissural)\b"), veto_window=60),
    Rule("Emphysema", _rx(r"\bemphysem\w*", r"\bbulla\w*", r"\bbullous\b", r"\bblebs?\b")),
    Rule("Atelectasis", _rx(r"(?<!fibro)(?<!fibro )\batelecta\w*", r"\bdystelecta\w*",
                            r"\b(?:lobar|lobe|segmental|lung) collapse\b", r"\bcollapsed? (?:lung|lobe)\b"),
         veto=re.compile(r"\bfibro\w*\W*$"), veto_window=15, veto_before_only=True),
    Rule("Lung nodule", _rx(
        r"\b(?:micro)?nodules?\b", r"\bnodular (?:lesion|opacit|densit|formation|appearance|structure)\w*",
        r"\bmicronodul\w*", r"\bnodular\b(?! (?:consolidat|ground|glass|infiltrat|pleural|thicken|calcif|"
        r"enhanc|dens\b|hypodense|hyperdense))"),
        veto=re.compile(r"\b(?:reticulonodular|schmorl|mural|adenoma\w*|"
                        r"cysts?|hypodense|enhanc\w*|areola|breasts?|calcifications|lymph nodes?)\b|"
                        r"\bnodular (?:consolidat|thicken)"),
        veto_window=50, check=lambda s, m: not _other_organ(s)),
    Rule("Lung opacity", _rx(r"\bground ?glass\w*"),
         veto=re.compile(r"^\W*(?:\w+\W+){0,2}(?:nodul\w*|halo)|\bhalo\b"), veto_window=20, veto_after_only=True),
    Rule("Lung opacity", _rx(r"\bopacit\w*", r"\bhazy\b", r"\bopaque\b"), veto=re.compile(_NOT_LUNG_OPACITY),
         veto_window=50),
    Rule("Lung opacity", _rx(
        r"\bdensit(?:y|ies) increas\w*", r"\bincrease\w* (?:in |of )?(?:the )?(?:\w+ ){0,2}densit\w*",
        r"\bincreased (?:\w+ ){0,2}densit\w*",
        r"\b(?:nodular|dependent|patchy|alveolar|infectious|irregular|focal|heterogeneous|inflammatory|"
        r"pneumonic) (?:\w+ )?densit(?:y|ies)\b"),
        veto=re.compile(_NOT_LUNG_OPACITY + r"|\bsequel\w*|\bfibro\w*|\bscar\w*|\bcicatri\w*|\bpleuroparenchymal\b|"
                        r"\bpleuraparenchymal\b|\bconsolidat\w*|\blow densit\w*|\bair densit\w*|\bmucus\b|"
                        r"\bsutures?\b|\bstent\b|\breticulonodular\b|\bcentriacinar\b|\bedema\b"),
        veto_window=60),
    Rule("Pulmonary fibrotic sequela", _rx(
        r"\bsequel\w*", r"\bfibro ?atelecta\w*", r"\bfibrotic\b", r"\bfibro\b", r"\bfibrous (?:band|scar|sequel|densit|strand)\w*",
        r"\b(?:pleuro|pleura)parenchymal (?:band|densit|strand)\w*", r"\bparenchymal (?:band|strand)s?\b", r"\bband(?: like|s)?\b(?= (?:atelecta|densit|opacit|form|sequel))",
        r"\bscar\w*", r"\bcicatri\w*"),
        veto=re.compile(r"\b(?:fibroadenoma|fibroid|fibrocystic|fibroglandular|fibrous dysplasia|fibrolipoma|"
                        r"fibroma|fibrofatty|granulomatous|tb|tuberculo\w*|lymph nodes?|calcific (?:lymph|nodule)|"
                        r"honeycomb\w*|interstitial lung disease|ild|uip|nsip)\b"),
        veto_window=60, check=lambda s, m: not _other_organ(s) and not re.search(
            r"\b(?:rib|humer\w*|kidneys?|renal|vertebra\w*|bone|fracture|perirenal|pyelonephritis)\b", s)),
    Rule("Pleural effusion", _rx(r"\bhydrothorax\b", r"\bhemothorax\b", r"\bhaemothorax\b", r"\bempyema\b",
                                 r"\bpyothorax\b", r"\bhydropneumothorax\b")),
    Rule("Pleural effusion", _rx(r"\beffusions?\b", r"\bfluid\b"),
         check=lambda s, m: _fluid_site(s, m) == "pleura"),
    Rule("Mosaic attenuation pattern", _rx(
        r"\bmosaic\w*", r"\bair ?trapping\b", r"\bmosaic perfusion\b")),
    Rule("Peribronchial thickening", _rx(
        r"\bperibronch\w* (?:\w+ ){0,4}thicken\w*", r"\bperibronch\w* (?:\w+ ){0,4}(?:increase|increases) in "
        r"(?:wall )?thickness", r"\bbronch\w* wall (?:\w+ ){0,2}thicken\w*",
        r"\bthicken\w* (?:of |in )?(?:the )?(?:\w+ ){0,2}(?:peribronch\w*|bronch\w* wall\w*|bronchovascular|"
        r"peribronchovascular)", r"\bperibronchovascular (?:\w+ ){0,3}thicken\w*",
        r"\bincrease\w* in (?:the )?(?:peribronch\w*|bronch\w* wall) (?:\w+ )?thickness",
        r"\bperibronchial (?:cuffing|infiltration)\b",
        r"\bperibronch\w* (?:\w+ ){0,3}thickness (?:\w+ )?increas\w*",
        r"\bincrease\w* in (?:the )?(?:\w+ )?thickness (?:\w+ ){0,3}(?:peribronch\w*|bronch\w* wall\w*)")),
    Rule("Consolidation", _rx(r"\bconsolidat\w*")),
    Rule("Bronchiectasis", _rx(
        r"\bbronchiect\w*", r"\bbronchiolect\w*", r"\bectasi\w* (?:\w+ ){0,4}bronch\w*",
        r"\bbronch\w* (?:\w+ ){0,3}(?:ectasi|dilat)\w*", r"\bdilat\w* (?:\w+ ){0,3}bronch\w*")),
    Rule("Interlobular septal thickening", _rx(
        r"\binterlob\w* (?:\w+ ){0,3}(?:septa\w*|thicken\w*)", r"\b(?:inter|intra)?sept(?:al|a|um)\w* (?:\w+ ){0,4}thicken\w*",
        r"\b(?:inter|intra)?sept(?:al|a|um)\w* (?:\w+ ){0,2}thickness (?:\w+ )?increas\w*",
        r"\bthicken\w* (?:of |in )?(?:the )?(?:\w+ ){0,2}(?:interlobular|septa\w*)",
        r"\bincrease\w* in (?:the )?(?:\w+ )?(?:interlobular|septal) (?:septal )?thickness",
        r"\binterstitial (?:\w+ ){0,2}thicken\w*")),
)


_ORGAN = re.compile(r"\b(?:thyroid|liver|hepatic|adrenal|kidneys?|renal|spleen|splenic|pancrea\w*|breasts?|"
                    r"gallbladder|stomach|gastric|bowel|colon|uterus|ovar\w*|prostat\w*|bladder|subcutaneous|"
                    r"skin|axilla\w*|mediastin\w*|vertebra\w*|bones?|osseous|ribs?|sternum|trachea\w*|"
                    r"bronch(?:us|i)\b|pericard\w*|thymus|thymic|esophag\w*|muscles?|adipose|fatty tissue|"
                    r"capsule|pleura|pleural)\b")
_LUNG = re.compile(r"\b(?:lungs?|pulmonary|lung parenchyma|lingul\w*|fissure|subpleural|hemithorax|"
                   r"(?:upper|lower|middle) lobes?|apical|apicoposterior|(?:postero|antero|latero|medio)?basal|"
                   r"pleural based|perifissural|peribronch\w*|centrilobular)\b")


_SITES = (
    ("pericardium", re.compile(r"\bpericard\w*")),
    ("pleura", re.compile(r"\bpleura\w*|\bhemithora\w*|\bthorax\b|\bfissure\b|\bintrathoracic\b|\blungs?\b|"
                          r"\bbasal\w*|\bbases\b|\bcostophrenic\b|\bsinus\w*")),
    ("other", re.compile(r"\b(?:peri)?(?:renal|nephric|hepatic|splenic|pancreatic|vesical|cholecystic|colonic)\b|"
                         r"\babdom\w*|\bperitone\w*|\bpelvi\w*|\bjoints?\b|\bascit\w*|\bsubphrenic\b|\bknee|"
                         r"\bshoulder|\bliver|\bgallbladder|\bmorison|\bsubcutaneous|\bmediastin\w*|\bthyroid|"
                         r"\bkidneys?\b|\bbladder|\bintestin\w*|\bbowel|\besophag\w*|\bstomach|\bgastric|\bcyst\w*")),
)


def _fluid_site(sent: str, m: re.Match) -> str | None:
    """Where an effusion or fluid mention is: the site word nearest to it in its sentence (a word just
    before it wins a tie); a bare "effusion" with no site word is pleural (chest CT), bare "fluid" is
    nowhere."""
    best, best_d = None, None
    for site, rx in _SITES:
        for w in rx.finditer(sent):
            d = m.start() - w.end() if w.end() <= m.start() else (w.start() - m.end()) + 0.5
            if d < 0:
                continue
            if best_d is None or d < best_d:
                best, best_d = site, d
    if best is None and m.group(0).startswith("effusion"):
        return "pleura"
    return best


def _other_organ(sent: str) -> bool:
    """The sentence speaks of another organ and names no lung part."""
    return bool(_ORGAN.search(sent)) and not _LUNG.search(sent)


def _only_coronary(sent: str, m: re.Match) -> bool:
    """True when an arterial calcification mention speaks of coronary arteries alone: its sentence names a
    coronary artery and no other artery."""
    return bool(re.search(r"\b(?:coronar\w*|lad|rca|lcx|circumflex)\b", sent)) and not _OTHER_ARTERY.search(sent)


assert set(r.label for r in RULES) == set(LABELS), "every label needs a rule"
_RULE_INDEX = tuple(LABELS.index(r.label) for r in RULES)


def _rule_hits(rule: Rule, sent: str, neg: list[tuple[int, int]]) -> list[re.Match]:
    hits = []
    for m in rule.mention.finditer(sent):
        if _in_spans(m.start(), neg):
            continue
        if rule.veto is not None:
            b = min(len(sent), m.end() + rule.veto_window)
            if rule.veto_before_only:
                if rule.veto.search(sent[max(0, m.start() - rule.veto_window):m.start()]):
                    continue
            elif rule.veto_after_only:
                if rule.veto.search(sent[m.end():b]):
                    continue
            elif rule.veto.search(sent, max(0, m.start() - rule.veto_window), b):
                continue
        if rule.context is not None and not any(not _in_spans(c.start(), neg)
                                                 for c in rule.context.finditer(sent)):
            continue
        if rule.check is not None and not rule.check(sent, m):
            continue
        hits.append(m)
    return hits


class RulesLabeler:
    """Offline rule labeler for chest CT report text (see the module docstring)."""

    name = "rules"

    def label_one(self, text: str) -> np.ndarray:
        out = np.zeros(len(LABELS), dtype=np.int8)
        if not isinstance(text, str) or not text.strip():
            return out
        for sent in sentences(text):
            neg = _negated_spans(sent)
            for j, rule in zip(_RULE_INDEX, RULES):
                if not out[j] and _rule_hits(rule, sent, neg):
                    out[j] = 1
        return out

    def label(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.label_one(t) for t in texts]) if len(texts) else np.zeros((0, len(LABELS)), np.int8)

    def describe(self) -> dict:
        return {"name": self.name, "checkpoint": None, "model_dir": None}


# =========================================================================================================
# RadBERT classifier (CT-CLIP)
# =========================================================================================================
class RadBertLabeler:
    """CT-CLIP's RadBertClassifier: RobertaModel + Linear(hidden, 18) on the pooler output, sigmoid >= 0.5.

    ``checkpoint``: the published ``RadBertClassifier.pth``, a state dict whose keys are ``model.<RobertaModel
    key>`` and ``classifier.weight`` / ``classifier.bias`` (an optional ``module.`` prefix, from
    DataParallel, is removed; ``model.embeddings.position_ids``, a buffer older transformers saved, is
    ignored). ``model_dir``: a local RadBERT-RoBERTa-4m folder (config.json and tokenizer files); its weights
    are not needed, every weight comes from the checkpoint. Input is lower-cased (``lowercase``, default on;
    off reproduces the authors' evaluation, whose ``do_lower_case=True`` a RoBERTa tokenizer ignores), truncated
    to ``max_length`` tokens.
    """

    name = "radbert"
    IGNORED_KEYS = ("model.embeddings.position_ids",)

    def __init__(self, checkpoint: str | Path, model_dir: str | Path, device: str = "cpu", batch_size: int = 8,
                 max_length: int = 512, lowercase: bool = True, threshold: float = 0.5):
        import torch
        from transformers import AutoConfig, AutoTokenizer, RobertaModel

        self.checkpoint, self.model_dir = Path(checkpoint), Path(model_dir)
        if not self.model_dir.is_dir():
            raise InputError(self.model_dir, "RadBERT folder not found (config.json and tokenizer files needed)")
        if not self.checkpoint.is_file():
            raise InputError(self.checkpoint, "classifier checkpoint not found")
        try:
            config = AutoConfig.from_pretrained(str(self.model_dir), local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        except (OSError, ValueError) as err:
            raise InputError(self.model_dir, f"cannot load RoBERTa config/tokenizer: {err}") from err
        try:
            state = torch.load(str(self.checkpoint), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unreadable or not a state dict
            raise InputError(self.checkpoint, f"cannot read state dict: {err}") from err
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InputError(self.checkpoint, f"expected a state dict, found {type(state).__name__}")
        state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k not in self.IGNORED_KEYS}
        head_w = state.get("classifier.weight")
        if head_w is None or tuple(head_w.shape) != (len(LABELS), config.hidden_size):
            raise InputError(self.checkpoint, f"classifier.weight must have shape ({len(LABELS)}, "
                                              f"{config.hidden_size}); found "
                                              f"{None if head_w is None else tuple(head_w.shape)}")
        self.encoder = RobertaModel(config, add_pooling_layer=True)
        self.head = torch.nn.Linear(config.hidden_size, len(LABELS))
        enc_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        head_state = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
        other = sorted(set(state) - {f"model.{k}" for k in enc_state} - {f"classifier.{k}" for k in head_state})
        if other:
            raise InputError(self.checkpoint, f"unexpected keys (not model.* / classifier.*): {other[:5]}")
        expected = set(self.encoder.state_dict())
        missing, unexpected = expected - set(enc_state), set(enc_state) - expected
        # position_ids is a buffer some transformers versions keep in the state dict and others do not.
        missing.discard("embeddings.position_ids")
        unexpected.discard("embeddings.position_ids")
        if missing or unexpected:
            raise InputError(self.checkpoint, f"does not fit a RobertaModel of {self.model_dir}: missing "
                                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        self.encoder.load_state_dict(enc_state, strict=False)
        self.head.load_state_dict(head_state)
        self.device = torch.device(device)
        self.encoder.to(self.device).eval()
        self.head.to(self.device).eval()
        self.batch_size, self.max_length = batch_size, max_length
        self.lowercase, self.threshold = lowercase, threshold

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        texts = [t if isinstance(t, str) and t.strip() else " " for t in texts]
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = [t.lower() if self.lowercase else t for t in texts[i:i + self.batch_size]]
                enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                                     max_length=self.max_length)
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                pooled = self.encoder(**enc).pooler_output
                out.append(self.head(pooled).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(texts)))

    def label(self, texts: Sequence[str]) -> np.ndarray:
        return (self.probabilities(texts) >= self.threshold).astype(np.int8)

    def describe(self) -> dict:
        return {"name": self.name, "checkpoint": str(self.checkpoint), "model_dir": str(self.model_dir),
                "lowercase": self.lowercase, "max_length": self.max_length, "threshold": self.threshold}


def get_labeler(name: str | None = None, checkpoint: str | None = None, model_dir: str | None = None,
                lowercase: bool | None = None, **kwargs) -> Labeler:
    """``rules`` (default) or ``radbert`` (needs ``checkpoint`` and ``model_dir``). ``lowercase``: radbert only,
    lower-case the text before tokenizing (None: the default, on; False: cased, as the authors' evaluation)."""
    name = name or "rules"
    if lowercase is not None:
        kwargs["lowercase"] = bool(lowercase)
    if name == "rules":
        return RulesLabeler()
    if name == "radbert":
        if not checkpoint or not model_dir:
            from reg2rg.errors import ConfigError

            raise ConfigError("the radbert labeler needs --checkpoint (RadBertClassifier.pth) and --radbert "
                              "(a local RadBERT-RoBERTa-4m folder)")
        return RadBertLabeler(checkpoint, model_dir, **kwargs)
    from reg2rg.errors import ConfigError

    raise ConfigError(f"unknown labeler {name!r}; choose rules or radbert")


# =========================================================================================================
# Scores of labels against labels
# =========================================================================================================
def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def chance_micro_f1(y_true: np.ndarray) -> float:
    """The expected micro F1 of a writer that knows how often each label occurs in these scans and not which
    scans have it: label j is given to every scan at random with probability p_j = s_j / n (s_j of the n scans
    have it). Per label E[tp] = p_j s_j and E[tp + fp] = p_j n = s_j, so the expected pooled precision and recall
    are both sum_j s_j^2 / (n sum_j s_j), and so is F1. The level that findings which do not come from the image
    reach; 0 when no scan has a label."""
    y_true = np.asarray(y_true, dtype=bool)
    n, support = y_true.shape[0], y_true.sum(axis=0).astype(float)
    return float((support ** 2).sum() / (n * support.sum())) if n and support.sum() else 0.0


def label_agreement(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str] = LABELS) -> dict:
    """Precision, recall and F1 of ``y_pred`` against ``y_true`` ((n, L) 0/1 arrays): per label, micro
    (counts pooled over labels), macro (mean of the per-label values) and support-weighted. A ratio with a
    zero denominator counts as 0 (scikit-learn's zero_division=0)."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != len(labels):
        raise ValueError(f"label arrays must both be (n, {len(labels)}); got {y_true.shape} and {y_pred.shape}")
    rows = []
    for j, name in enumerate(labels):
        t, p = y_true[:, j], y_pred[:, j]
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        tn = int((~t & ~p).sum())
        prec, rec, f1 = _prf(tp, fp, fn)
        rows.append({"label": name, "precision": prec, "recall": rec, "f1": f1, "support": int(t.sum()),
                     "predicted": int(p.sum()), "tp": tp, "fp": fp, "fn": fn, "tn": tn})
    tp = sum(r["tp"] for r in rows)
    fp = sum(r["fp"] for r in rows)
    fn = sum(r["fn"] for r in rows)
    micro = dict(zip(("precision", "recall", "f1"), _prf(tp, fp, fn)))
    macro = {k: float(np.mean([r[k] for r in rows])) for k in ("precision", "recall", "f1")}
    support = np.array([r["support"] for r in rows], dtype=float)
    weighted = {k: (float(np.sum([r[k] for r in rows] * support) / support.sum()) if support.sum() else 0.0)
                for k in ("precision", "recall", "f1")}
    return {"n": int(y_true.shape[0]), "micro": micro, "macro": macro, "weighted": weighted, "per_label": rows}


# =========================================================================================================
# Development split of the CT-CLIP manual labels (ct-clip-reports/train.csv)
# =========================================================================================================
SPLIT_SEED = 2024
N_DEV = 600


def dev_heldout_split(n_rows: int, seed: int = SPLIT_SEED, n_dev: int = N_DEV) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the fixed development / held-out split: a seeded permutation (numpy
    default_rng(seed)); its first ``n_dev`` positions are for development, the rest are held out."""
    perm = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(perm[:n_dev]), np.sort(perm[n_dev:])


def score_on_manual_labels(csv_path: str | Path, split: str = "heldout", labeler: Labeler | None = None,
                           text_column: str = "report_text") -> dict:
    """Label the reports of a CT-CLIP-style CSV (text column + 18 label columns) and compare with its manual
    labels on the rows of ``split`` (``dev``, ``heldout`` or ``all``)."""
    import pandas as pd

    df = pd.read_csv(csv_path)
    missing = [c for c in (text_column, *LABELS) if c not in df.columns]
    if missing:
        raise InputError(csv_path, f"missing columns {missing}")
    dev, held = dev_heldout_split(len(df))
    rows = {"dev": dev, "heldout": held, "all": np.arange(len(df))}[split]
    part = df.iloc[rows]
    labeler = labeler or RulesLabeler()
    pred = labeler.label(part[text_column].tolist())
    result = label_agreement(part[list(LABELS)].to_numpy().astype(int), pred)
    result["split"] = split
    result["rows"] = int(len(part))
    return result


# =========================================================================================================
# Command line
# =========================================================================================================
def label_table(df, text_column: str, labeler: Labeler):
    """The table's non-text columns (ids) followed by 18 label columns (0/1) for the texts of ``text_column``."""
    import pandas as pd

    texts = df[text_column].astype(object).where(df[text_column].notna(), "").astype(str).tolist()
    labels = labeler.label(texts)
    ids = df[[c for c in df.columns if c != text_column and c not in LABELS]]
    return pd.concat([ids.reset_index(drop=True), pd.DataFrame(labels.astype(int), columns=list(LABELS))], axis=1)


def cli(args: argparse.Namespace) -> int:
    """`reg2rg label`: label a report CSV."""
    import pandas as pd

    path = Path(args.input)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read CSV: {err}") from err
    if args.text_column not in df.columns:
        raise InputError(path, f"no column {args.text_column!r}; columns are {list(df.columns)}")
    dropped = [c for c in df.columns if c in LABELS]
    if dropped:
        log.warning("%s: replacing its existing label columns %s", path, dropped)
    labeler = get_labeler(args.labeler, getattr(args, "checkpoint", None), getattr(args, "radbert", None),
                          lowercase=getattr(args, "radbert_lowercase", None))
    out = label_table(df, args.text_column, labeler)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.output, index=False)
    log.info("labelled %d reports with %s -> %s", len(out), labeler.name, args.output)
    return 0


def _main(argv: list[str] | None = None) -> int:
    """python -m reg2rg.evaluate.labelers: score the rules labeler against manual labels."""
    p = argparse.ArgumentParser(description="score the rules labeler on a CT-CLIP-style labelled CSV")
    p.add_argument("--data", default="../shared/data/ct-clip-reports/train.csv")
    p.add_argument("--split", choices=["dev", "heldout", "all"], default="heldout")
    p.add_argument("--text-column", default="report_text")
    a = p.parse_args(argv)
    res = score_on_manual_labels(a.data, a.split, text_column=a.text_column)
    print(f"{'label':36s} {'P':>6s} {'R':>6s} {'F1':>6s} {'support':>8s}")
    for r in res["per_label"]:
        print(f"{r['label']:36s} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} {r['support']:8d}")
    for k in ("micro", "macro"):
        v = res[k]
        print(f"{k:36s} {v['precision']:6.3f} {v['recall']:6.3f} {v['f1']:6.3f}")
    print(f"rows: {res['rows']} ({res['split']})")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
