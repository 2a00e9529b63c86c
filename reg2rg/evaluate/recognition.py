"""Region recognition: does the generated report name the right anatomical area for each region index?

For each scan and each region index i in its prompt, the true area comes from the mask (the predictions'
``region_areas`` column: area names by region index, position 0 = region 1), or, where that column is
absent or empty for the scan, from the reference report's RRA prefixes ("The region i is X: ..."). The
named area is the one the prediction's prefix gives for the same index ("missing" when the prediction has
no prefix for it, the word itself when it is no known region).

Counting follows the authors' script (evaluation/region_pred_acc.py of Reg2RG): a correct name is a true
positive of its area; a wrong known name is a false positive of the named area and a false negative of
the true one; a missing or unknown name is a false negative of the true area. Precision, recall and F1
per area use zero for a zero denominator (the authors add 1e-5 instead). The mean (and numpy std) over
areas is given over all areas and, as the paper reported it, without lung and pleura; areas that never
occur as a true area are left out of the means (the authors average all listed areas, which is the same
whenever every area occurs in the test set).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from reg2rg.constants import REGIONS
from reg2rg.rra import parse_rra

MISSING = "missing"
OTHER = "other"
EXCLUDED_BY_AUTHORS = ("lung", "pleura")


@dataclass(frozen=True)
class RegionPair:
    case_id: str
    index: int  # 1-based region index
    true_area: str
    named_area: str  # a REGIONS name, MISSING, or the unknown word the prediction used


def _first_by_index(parts) -> dict[int, "object"]:
    out = {}
    for p in parts:
        out.setdefault(p.index, p)
    return out


def true_areas(reference: str, region_areas: Sequence[str | None] | None) -> dict[int, str]:
    """Region index (1-based) -> true area: from ``region_areas`` when given (None entries are regions not in
    the prompt), else from the reference's RRA prefixes."""
    if region_areas is not None and len(region_areas):
        return {i + 1: str(a).strip().lower() for i, a in enumerate(region_areas)
                if a is not None and str(a).strip() and str(a).strip().lower() not in ("nan", "none")}
    return {i: p.area for i, p in _first_by_index(parse_rra(reference or "")).items()}


def region_pairs(case_ids: Sequence[str], references: Sequence[str], predictions: Sequence[str],
                 region_areas: Sequence[Sequence[str | None] | None] | None = None) -> list[RegionPair]:
    """One (true area, named area) pair per region index of every scan."""
    pairs = []
    areas_list = region_areas if region_areas is not None else [None] * len(case_ids)
    for cid, ref, pred, areas in zip(case_ids, references, predictions, areas_list, strict=True):
        named = {i: p.area for i, p in _first_by_index(parse_rra(pred or "")).items()}
        for idx, area in sorted(true_areas(ref, areas).items()):
            pairs.append(RegionPair(str(cid), idx, area, named.get(idx, MISSING)))
    return pairs


def _prf(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def _mean_std(rows, areas, key):
    vals = [r[key] for r in rows if r["area"] in areas and r["support"] > 0]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)


def recognition_metrics(pairs: Iterable[RegionPair], source: str | None = None) -> dict:
    """Per-area precision/recall/F1, their means (all areas; without lung and pleura), accuracy (pooled and
    mean per scan) and the confusion matrix (rows: true area, columns: named area, then 'other' for an
    unknown name and 'missing')."""
    pairs = list(pairs)
    known = list(REGIONS)
    tp = dict.fromkeys(known, 0)
    fp = dict.fromkeys(known, 0)
    fn = dict.fromkeys(known, 0)
    cols = known + [OTHER, MISSING]
    extra_true = sorted({p.true_area for p in pairs} - set(known))
    rows_names = known + extra_true
    confusion = np.zeros((len(rows_names), len(cols)), dtype=int)
    per_scan: dict[str, list[bool]] = {}
    for p in pairs:
        named = p.named_area if p.named_area in known or p.named_area == MISSING else OTHER
        confusion[rows_names.index(p.true_area), cols.index(named)] += 1
        correct = p.named_area == p.true_area
        per_scan.setdefault(p.case_id, []).append(correct)
        if p.true_area not in known:
            if named in known:
                fp[named] += 1
            continue
        if correct:
            tp[p.true_area] += 1
        else:
            fn[p.true_area] += 1
            if named in known:
                fp[named] += 1
    per_region = []
    for a in known:
        prec, rec, f1 = _prf(tp[a], fp[a], fn[a])
        per_region.append({"area": a, "precision": prec, "recall": rec, "f1": f1, "support": tp[a] + fn[a],
                           "tp": tp[a], "fp": fp[a], "fn": fn[a]})
    present = [r for r in per_region if r["support"] or r["fp"]]
    kept = [a for a in known if a not in EXCLUDED_BY_AUTHORS]
    means = {}
    for name, areas in (("all_regions", known), ("without_lung_pleura", kept)):
        means[name] = {}
        for key in ("precision", "recall", "f1"):
            m, s = _mean_std(per_region, areas, key)
            means[name][key] = m
            means[name][f"{key}_std"] = s
    n = len(pairs)
    accuracy = sum(p.named_area == p.true_area for p in pairs) / n if n else None
    scan_acc = [float(np.mean(v)) for v in per_scan.values()]
    return {
        "source": source,
        "n_regions": n,
        "n_scans": len(per_scan),
        "accuracy": accuracy,
        "accuracy_per_scan": {"mean": float(np.mean(scan_acc)) if scan_acc else None,
                              "std": float(np.std(scan_acc)) if scan_acc else None},
        "per_region": per_region,
        "mean": means,
        "areas_seen": [r["area"] for r in present],
        "confusion": {"true": rows_names, "named": cols, "counts": confusion.tolist()},
    }
