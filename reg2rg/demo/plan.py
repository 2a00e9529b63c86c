"""The demo data set's plan: case ids, source splits, shapes, findings, mask faults and omitted texts decided
for every case before it is drawn (deterministic for a seed), and `render_case`, which draws one planned case
(its phantom and its report, each from its own random stream seeded with (seed, case number)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from reg2rg.demo.phantom import (DEFAULT_SHAPE, DEFAULT_SPACING, FINDING_KINDS, FINDINGS, PhantomGeometry,
                                  draw_findings, make_phantom)
from reg2rg.demo.report_text import DemoReport, compose_report

LAYOUTS = ("radgenome", "ctrg")

# Per-case variation of the field of view around the nominal shape (fraction, +-).
SHAPE_JITTER_XY = 0.08
SHAPE_JITTER_Z = 0.10
# CTRG-like series: in-plane pixel spacing and slice spacing vary between scans.
CTRG_PIXEL_SPACING_MM = (0.85, 1.0)
CTRG_SLICE_SPACING_MM = (2.5, 3.0)

# Mask faults (as in RadGenome): regions whose file may be missing or empty; never one holding a finding.
MASK_FAULT_REGIONS = ("breast", "thyroid", "esophagus", "abdomen")
PROB_EXTRA_MASK_FAULT = 0.1
# Regions a report may leave out entirely when they are normal.
OPTIONAL_TEXT_REGIONS = ("breast", "thyroid", "esophagus", "abdomen", "bone")
PROB_OMIT_TEXT = 0.1


@dataclass
class CasePlan:
    """Everything decided about one case before it is drawn."""

    index: int  # 0-based over the whole data set; seeds the case's generator with (seed, index)
    case_id: str
    source_split: str  # radgenome: train/valid; ctrg: train/test
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    findings: list[str]
    missing_masks: list[str] = field(default_factory=list)
    empty_masks: list[str] = field(default_factory=list)
    omit_text: list[str] = field(default_factory=list)
    patient: dict = field(default_factory=dict)  # ctrg: made-up identity written into the DICOM headers


def _case_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for a case's image and its report."""
    image_ss, text_ss = np.random.SeedSequence([int(seed), int(index)]).spawn(2)
    return np.random.default_rng(image_ss), np.random.default_rng(text_ss)


def plan_dataset(layout: str, cases: int, seed: int, test_fraction: float = 0.25,
                 shape: Sequence[int] | None = None) -> list[CasePlan]:
    """Decide ids, splits, shapes, findings, mask faults and omitted texts of every case (deterministic).

    Every finding kind occurs in at least one training case when there are enough training cases; with
    two or more cases at least one region file is missing and one is empty (radgenome)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    nominal = tuple(int(s) for s in (shape if shape is not None else DEFAULT_SHAPE))
    if len(nominal) != 3:
        raise ValueError(f"shape must be 3 numbers (x y z), got {shape}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2**31 - 1]))
    n_test = int(round(cases * test_fraction))
    if test_fraction > 0 and cases >= 2:
        n_test = max(n_test, 1)
    n_test = min(n_test, cases - 1)
    is_test = np.zeros(cases, dtype=bool)
    is_test[rng.permutation(cases)[:n_test]] = True
    splits = ("valid", "train") if layout == "radgenome" else ("test", "train")

    plans: list[CasePlan] = []
    counters = {"train": 0, "valid": 0, "test": 0}
    for i in range(cases):
        split = splits[0] if is_test[i] else splits[1]
        counters[split] += 1
        n = counters[split]
        case_id = f"{split}_{n}_a_1" if layout == "radgenome" else f"ctrg_{i + 1:04d}"
        if layout == "radgenome":
            spacing = DEFAULT_SPACING
        else:
            px = round(float(rng.uniform(*CTRG_PIXEL_SPACING_MM)), 3)
            spacing = (px, px, float(rng.choice(CTRG_SLICE_SPACING_MM)))
        fov = [nominal[a] * DEFAULT_SPACING[a] * rng.uniform(1 - j, 1 + j)
               for a, j in enumerate((SHAPE_JITTER_XY, SHAPE_JITTER_XY, SHAPE_JITTER_Z))]
        case_shape = tuple(max(int(round(fv / sp)), 8) for fv, sp in zip(fov, spacing))
        plans.append(CasePlan(i, case_id, split, case_shape, tuple(spacing), draw_findings(rng)))

    train = [p for p in plans if p.source_split == "train"]
    if len(train) >= 4:  # make every finding occur in training: add the missing ones to the lightest cases
        for kind in FINDING_KINDS:
            if not any(kind in p.findings for p in train):
                target = min((p for p in train if p.findings), key=lambda p: len(p.findings), default=train[0])
                target.findings.append(kind)

    def fault_region(case_plan: CasePlan) -> str | None:
        busy = {FINDINGS[k][1] for k in case_plan.findings} | set(case_plan.missing_masks) | set(case_plan.empty_masks)
        free = [r for r in MASK_FAULT_REGIONS if r not in busy]
        return str(rng.choice(free)) if free else None

    if layout == "radgenome" and cases >= 2:
        order = [plans[int(j)] for j in rng.permutation(cases)]
        first_train = next((p for p in order if p.source_split == "train"), order[0])
        first_other = next((p for p in order if p is not first_train and p.source_split != "train"),
                           next(p for p in order if p is not first_train))
        for p, bucket in ((first_train, "missing_masks"), (first_other, "empty_masks")):
            r = fault_region(p)
            if r:
                getattr(p, bucket).append(r)
        for p in plans:
            if len(p.missing_masks) + len(p.empty_masks) < 2 and rng.random() < PROB_EXTRA_MASK_FAULT:
                r = fault_region(p)
                if r:
                    (p.missing_masks if rng.random() < 0.5 else p.empty_masks).append(r)
    for p in plans:
        busy = {FINDINGS[k][1] for k in p.findings}
        p.omit_text = [r for r in OPTIONAL_TEXT_REGIONS if r not in busy and rng.random() < PROB_OMIT_TEXT]
    if cases >= 2 and not any(p.omit_text for p in plans):
        p = plans[int(rng.integers(cases))]
        p.omit_text = [r for r in OPTIONAL_TEXT_REGIONS if r not in {FINDINGS[k][1] for k in p.findings}][:1]
    if layout == "ctrg":
        for p in plans:
            tag = "".join(rng.choice(list("BCDFGHJKLMNPQRSTVWXZ"), size=4))
            p.patient = {
                "PatientName": f"Demo{tag.capitalize()}^Patient{p.index + 1}",
                "PatientID": f"DEMO{int(seed) % 10000:04d}{int(rng.integers(10**6, 10**7))}",
                "PatientBirthDate": f"{int(rng.integers(1940, 2000))}{int(rng.integers(1, 13)):02d}"
                                    f"{int(rng.integers(1, 29)):02d}",
                "AccessionNumber": f"{int(rng.integers(10**9, 10**10))}",
                "StudyDate": f"2021{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
                "StudyTime": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
            }
    return plans


@dataclass
class DemoCase:
    plan: CasePlan
    hu: np.ndarray
    masks: dict[str, np.ndarray]
    findings: list[dict]
    geometry: PhantomGeometry
    report: DemoReport


def render_case(plan: CasePlan, seed: int, report_style: str = "varied") -> DemoCase:
    """Draw a planned case: its phantom (image generator) and its report (text generator; report_style: see
    compose_report)."""
    image_rng, text_rng = _case_rngs(seed, plan.index)
    hu, masks, findings, geometry = make_phantom(image_rng, plan.shape, plan.spacing, findings=plan.findings)
    report = compose_report(findings, text_rng, omit_regions=plan.omit_text, style=report_style)
    return DemoCase(plan, hu, masks, findings, geometry, report)
