"""The demo's reports: region-by-region text that describes the findings a phantom holds (several phrasings
per statement, finer anatomy paths as RadGenome's multi-granularity reports have), and the 18 CT-RATE labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from reg2rg.constants import ABNORMALITY_LABELS
from reg2rg.demo.phantom import FINDINGS

# Order of the regions in a whole report (CT-RATE reports run roughly so).
REPORT_ORDER = ("trachea and bronchie", "mediastinum", "heart", "thyroid", "esophagus", "lung", "pleura",
                "abdomen", "bone", "breast")


# Normal statements per region: several variants, each one or two (sentence, finer anatomy path or None).
NORMAL_SENTENCES: dict[str, list[list[tuple[str, str | None]]]] = {
    "trachea and bronchie": [
        [("Trachea and both main bronchi are in the midline and their lumens are open.", None)],
        [("The trachea is in the midline.", "trachea and bronchie/trachea"),
         ("Both main bronchi are patent.", "trachea and bronchie/bronchie")],
        [("Trachea and main bronchi are of normal calibre and patent.", "trachea and bronchie/trachea")],
    ],
    "mediastinum": [
        [("Mediastinal structures are of normal appearance.", "mediastinum/mediastinum")],
        [("The calibre of the mediastinal main vascular structures is normal.", "mediastinum/mediastinum/aorta"),
         ("No lymph node of pathological size is seen in the mediastinum.", "mediastinum/mediastinum/lymph node")],
        [("Mediastinal vascular structures and fat planes are normal.", None)],
    ],
    "heart": [
        [("Heart contour and size are normal.", "heart/heart")],
        [("Heart size is normal.", "heart/heart"), ("No pericardial effusion is seen.", "heart/heart/pericardium")],
        [("The heart is of normal size and the pericardium is unremarkable.", None)],
    ],
    "thyroid": [
        [("The thyroid gland is of normal size and density.", "thyroid/thyroid")],
        [("Both thyroid lobes appear unremarkable.", "thyroid/thyroid")],
        [("The thyroid gland is normal.", None)],
    ],
    "esophagus": [
        [("The thoracic esophagus is of normal calibre with no wall thickening.", "esophagus/esophagus")],
        [("The esophagus appears normal.", "esophagus/esophagus")],
        [("Thoracic esophagus calibre is normal.", None)],
    ],
    "lung": [
        [("Both lungs are clear.", "lung/lung")],
        [("The right lung is clear.", "lung/lung/right lung"), ("The left lung is clear.", "lung/lung/left lung")],
        [("No mass or infiltrate is seen in either lung.", "lung/lung")],
        [("Lung aeration is normal on both sides.", None)],
    ],
    "pleura": [
        [("No pleural effusion or thickening is seen.", "pleura/pleura")],
        [("The pleural spaces are clear.", "pleura/pleura")],
        [("Pleura is unremarkable on both sides.", None)],
    ],
    "abdomen": [
        [("Upper abdominal organs within the sections are normal.", "abdomen/abdomen")],
        [("The liver is normal.", "abdomen/abdomen/liver"),
         ("The spleen and stomach included in the scan are unremarkable.", "abdomen/abdomen")],
        [("No abnormality is seen in the upper abdomen within the scan range.", None)],
    ],
    "bone": [
        [("No lytic or destructive lesion is seen in the bones within the sections.", "bone/bone")],
        [("Bony structures are intact.", "bone/bone")],
        [("The vertebrae, ribs and sternum are normal.", "bone/bone/vertebrae")],
    ],
    "breast": [
        [("Breast tissue appears normal on both sides.", "breast/breast")],
        [("The breasts are unremarkable.", "breast/breast")],
        [("No mass is seen in either breast.", None)],
    ],
}

# Residual statements a region with a finding may add (they never negate any of the 18 labels).
RESIDUAL_SENTENCES: dict[str, list[str]] = {
    "lung": ["The remaining lung parenchyma is clear.", "Aeration of the other lung zones is normal."],
    "heart": ["Heart contour is otherwise smooth."],
    "mediastinum": ["The trachea is in the midline.", "Mediastinal fat planes are preserved."],
    "pleura": ["The other pleural space is clear."],
    "esophagus": ["The thoracic esophagus above it is of normal calibre."],
    "bone": ["The vertebrae are intact."],
}

# Finding sentences: templates filled with the finding's details; (template, finer anatomy path template).
FINDING_SENTENCES: dict[str, list[tuple[str, str | None]]] = {
    "lung_nodule": [
        ("A {size_mm} mm solid nodule is seen in the {lobe} of the {side} lung.",
         "lung/lung/{side} lung/{side} {lobe}"),
        ("There is a {size_mm} mm nodule in the {side} lung {lobe}.", "lung/lung/{side} lung/{side} {lobe}"),
        ("The {lobe} of the {side} lung contains a nodule measuring {size_mm} mm.", "lung/lung/{side} lung"),
    ],
    "emphysema": [
        ("Centrilobular emphysematous changes are seen in the upper lobes of both lungs.", "lung/lung"),
        ("Emphysema is present in both upper lung zones.", "lung/lung"),
        ("Areas of low attenuation consistent with emphysema are seen in the upper lobes, with a few bullae.",
         "lung/lung"),
    ],
    "consolidation": [
        ("Consolidation is seen in the {lobe} of the {side} lung.", "lung/lung/{side} lung/{side} {lobe}"),
        ("There is an area of consolidation with air bronchograms in the {side} {lobe}.", "lung/lung/{side} lung"),
        ("A consolidated area is noted in the {lobe} of the {side} lung.", "lung/lung/{side} lung/{side} {lobe}"),
    ],
    "pleural_effusion": [
        ("{Side_phrase} pleural effusion measuring {depth_mm} mm in depth is seen.", "pleura/pleura/{side_path}"),
        ("There is {side_article} pleural effusion up to {depth_mm} mm thick.", "pleura/pleura/{side_path}"),
        ("Pleural effusion is present {side_where}, reaching {depth_mm} mm.", "pleura/pleura"),
    ],
    "cardiomegaly": [
        ("The heart is enlarged (cardiomegaly).", "heart/heart"),
        ("Cardiomegaly is present.", "heart/heart"),
        ("Heart size is increased, consistent with cardiomegaly.", "heart/heart"),
    ],
    "pericardial_effusion": [
        ("Pericardial effusion reaching {thickness_mm} mm in thickness is seen.", "heart/heart/pericardium"),
        ("There is a pericardial effusion measuring {thickness_mm} mm.", "heart/heart/pericardium"),
        ("Fluid {thickness_mm} mm thick is seen in the pericardial space, consistent with pericardial effusion.",
         "heart/heart/pericardium"),
    ],
    "arterial_wall_calcification": [
        ("Atherosclerotic calcifications are seen in the wall of the thoracic aorta.", "mediastinum/mediastinum/aorta"),
        ("Calcified atheroma plaques are present in the aortic wall.", "mediastinum/mediastinum/aorta"),
        ("There are arterial wall calcifications in the aortic arch and descending aorta.",
         "mediastinum/mediastinum/aorta"),
    ],
    "lymphadenopathy": [
        ("Enlarged lymph nodes up to {short_axis_mm} mm in short axis are seen in the {stations}.",
         "mediastinum/mediastinum/lymph node"),
        ("Mediastinal lymphadenopathy is present, the largest node measuring {short_axis_mm} mm in the {stations}.",
         "mediastinum/mediastinum/lymph node"),
        ("There are pathologically enlarged lymph nodes in the {stations}, up to {short_axis_mm} mm.",
         "mediastinum/mediastinum/lymph node"),
    ],
    "hiatal_hernia": [
        ("Hiatal hernia is observed.", "esophagus/esophagus"),
        ("A sliding hiatal hernia is seen at the esophageal hiatus.", "esophagus/esophagus"),
        ("Part of the stomach herniates through the hiatus into the chest (hiatal hernia), measuring {size_mm} mm.",
         "esophagus/esophagus"),
    ],
    "sternotomy wires": [
        ("Sternotomy wires are present.", "bone/bone/sternum"),
        ("Median sternotomy wires are seen in the sternum.", "bone/bone/sternum"),
        ("Postoperative changes with metallic sternal wires are noted.", "bone/bone/sternum"),
    ],
    "central venous catheter": [
        ("A central venous catheter is seen with its tip in the superior vena cava.", "mediastinum/mediastinum/vein"),
        ("A catheter runs through the right brachiocephalic vein with its tip at the cavoatrial junction.",
         "mediastinum/mediastinum/vein"),
        ("Central venous catheter in place, tip in the superior vena cava.", "mediastinum/mediastinum/vein"),
    ],
}


# The `fixed` report style: one phrasing per finding and no measurements (see compose_report).
FIXED_FINDING_SENTENCES: dict[str, tuple[str, str | None]] = {
    "lung_nodule": ("A solid nodule is seen in the {lobe} of the {side} lung.", "lung/lung/{side} lung/{side} {lobe}"),
    "emphysema": FINDING_SENTENCES["emphysema"][0],
    "consolidation": FINDING_SENTENCES["consolidation"][0],
    "pleural_effusion": ("{Side_phrase} pleural effusion is seen.", "pleura/pleura/{side_path}"),
    "cardiomegaly": FINDING_SENTENCES["cardiomegaly"][0],
    "pericardial_effusion": ("Pericardial effusion is seen.", "heart/heart/pericardium"),
    "arterial_wall_calcification": FINDING_SENTENCES["arterial_wall_calcification"][0],
    "lymphadenopathy": ("Enlarged lymph nodes are seen in the {stations}.", "mediastinum/mediastinum/lymph node"),
    "hiatal_hernia": FINDING_SENTENCES["hiatal_hernia"][0],
    "sternotomy wires": FINDING_SENTENCES["sternotomy wires"][0],
    "central venous catheter": FINDING_SENTENCES["central venous catheter"][0],
}
# varied: several phrasings per statement drawn per case, measurements, optional residual sentences (RadGenome's
# reports vary so); fixed: the text is a function of the findings alone (the demo's default, docs/evaluation.md).
REPORT_STYLES = ("varied", "fixed")


@dataclass
class DemoReport:
    """A case's report: sentences per region with their finer anatomy paths, and the labels."""

    sentences: dict[str, list[tuple[str, str | None]]]  # region -> [(sentence, path or None)], REPORT_ORDER
    labels: dict[str, int]

    @property
    def region_texts(self) -> dict[str, str]:
        return {r: " ".join(s for s, _ in sents) for r, sents in self.sentences.items() if sents}

    @property
    def whole(self) -> str:
        return " ".join(self.region_texts[r] for r in REPORT_ORDER if r in self.region_texts)

    def csv_rows(self, volumename: str) -> list[tuple[str, str, str]]:
        """RadGenome rows: whole report (empty Anatomy), then per region its full text and its finer rows."""
        rows = [(volumename, "", self.whole)]
        for region in REPORT_ORDER:
            sents = self.sentences.get(region)
            if not sents:
                continue
            rows.append((volumename, region, " ".join(s for s, _ in sents)))
            finer: dict[str, list[str]] = {}
            for sentence, path in sents:
                if path:
                    finer.setdefault(path, []).append(sentence)
            rows.extend((volumename, path, " ".join(ss)) for path, ss in finer.items())
        return rows


def _finding_values(finding: dict) -> dict:
    """Template values of a finding (side phrases for effusions, station lists for nodes)."""
    v = dict(finding)
    side = finding.get("side")
    if finding["kind"] == "pleural_effusion":
        v["Side_phrase"] = "Bilateral" if side == "bilateral" else side.capitalize()
        v["side_article"] = "bilateral" if side == "bilateral" else f"a {side}-sided"
        v["side_where"] = "on both sides" if side == "bilateral" else f"on the {side}"
        v["side_path"] = "pleura" if side == "bilateral" else f"{side} pleura"
    if finding["kind"] == "lymphadenopathy":
        st = finding.get("stations", [])
        v["stations"] = " and ".join(st) if len(st) < 3 else ", ".join(st[:-1]) + " and " + st[-1]
    return v


def compose_report(findings: Sequence[dict], rng: np.random.Generator,
                   omit_regions: Iterable[str] = (), style: str = "varied") -> DemoReport:
    """Region-by-region report of a case: each finding in its region's text, a normal statement for each
    region without findings, no text at all for the normal regions in omit_regions. Labels: 1 for each
    finding's CT-RATE label, 0 otherwise.

    style varied: one of several phrasings per statement, measurements (nodule size, effusion depth, ...) and,
    at random, a residual sentence; fixed: the first phrasing of each normal statement and FIXED_FINDING_SENTENCES
    (no measurements, no residual sentence), so that the text depends on the findings alone and rng is unused.
    A phrasing drawn per case is a fingerprint of the case: a small decoder trained with teacher forcing
    recalls a training scan's later findings from its earlier sentences instead of reading them off the
    image (docs/evaluation.md, "The demo's numbers")."""
    if style not in REPORT_STYLES:
        raise ValueError(f"unknown report style {style!r}; expected one of {', '.join(REPORT_STYLES)}")
    fixed = style == "fixed"
    omit = set(omit_regions)
    by_region: dict[str, list[dict]] = {}
    for f in findings:
        kind = f["kind"]
        key = f.get("device", kind) if kind == "medical_material" else kind
        by_region.setdefault(f.get("region", FINDINGS[kind][1]), []).append({**f, "_key": key})
    sentences: dict[str, list[tuple[str, str | None]]] = {}
    for region in REPORT_ORDER:
        items = by_region.get(region, [])
        if not items:
            if region in omit:
                continue
            variants = NORMAL_SENTENCES[region]
            sentences[region] = list(variants[0 if fixed else int(rng.integers(len(variants)))])
            continue
        out = []
        for item in items:
            phrasings = FINDING_SENTENCES[item["_key"]]
            template, path = (FIXED_FINDING_SENTENCES[item["_key"]] if fixed
                              else phrasings[int(rng.integers(len(phrasings)))])
            values = _finding_values(item)
            out.append((template.format(**values), path.format(**values) if path else None))
        if not fixed and region in RESIDUAL_SENTENCES and rng.random() < 0.5:
            out.append((str(rng.choice(RESIDUAL_SENTENCES[region])), None))
        sentences[region] = out
    present = {f["label"] for f in findings}
    labels = {name: int(name in present) for name in ABNORMALITY_LABELS}
    return DemoReport(sentences, labels)


def write_report(findings: Sequence[dict], rng: np.random.Generator, omit_regions: Iterable[str] = (),
                 style: str = "varied"):
    """Report of a case from its findings (see compose_report).

    Returns (region_texts, whole_report, labels): {region: text} for the regions that have text,
    the whole report (region texts in reading order, joined), {CT-RATE label: 0/1} for all 18 labels."""
    rep = compose_report(findings, rng, omit_regions, style)
    return rep.region_texts, rep.whole, rep.labels
