"""The demo as shipped reads the image: `snakemake --cores 2` with the repository's own config (only the
ablation table cut to the global-only baseline, the full model and the shuffled-pairing control) names the area
of the held-out regions, writes findings that the held-out scans show (clinical-efficacy micro F1 above the
global-only baseline's), and the control trained on images paired with other scans' reports stays clearly below
it: the findings come from the image (the bounds: below). The longest test of the suite (its time is
benchmarks/demo_time.py's business, not this test's). It also checks the per-finding table of metrics.json and of the viewer the default target builds. The numbers of the
shipped run and of seeds 1 and 2 are in docs/evaluation.md ("The demo's numbers")."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_runs import workflow_copy

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# Issue 15's goals, for seeds 0, 1 and 2: accuracy >= 0.97, every area's F1 >= 0.95, CE micro F1 >= 0.5 and >= the
# baseline's + 0.15, and the control at the baseline's CE or below. The shipped demo (fixed report style, region
# text features; docs/evaluation.md, "The demo's numbers") meets the first four on all three seeds; this test holds
# seed 0 to them.
MIN_ACCURACY = 0.97
MIN_AREA_F1 = 0.95
MIN_CE_F1 = 0.5
MIN_CE_LEAD = 0.15  # over the global-only baseline
# The control (`shuffled`: each training image with another scan's region texts, a new pairing every epoch) cannot
# learn which image shows which finding; it writes the reports' most frequent statements, one finding for nearly
# every scan or none. Held at or below the chance level (metrics.json clinical_efficacy.chance_micro_f1: labels at
# random at each finding's rate in the test references; 0.354 on the demo's 24 test scans). Not at the baseline's
# CE: that baseline writes almost no finding (F1 0.00-0.22), and a control writing one common finding for every
# scan scores above 0. At the shipped 800 steps seeds 0, 1 and 2 measured control 0.198, 0.141 and 0.000
# (2026-12-08; it writes cardiomegaly for all 24 scans, hiatal hernia for 22, nothing), full model 0.667, 0.662 and
# 0.672 (2026-12-07; the same again in fresh runs of 2026-12-08). The full model must beat both clearly.
MIN_CE_LEAD_OVER_CONTROL = 0.3
MAX_CONTROL_OVER_CHANCE = 0.0
MIN_CE_LEAD_OVER_CHANCE = 0.15


def run_demo_with_controls(folder: Path, settings: dict | None = None) -> Path:
    """The demo workflow in a fresh copy of the repository's workflow under `folder`, plus the ablation table's
    baseline, d and shuffled rows; `settings` is merged as an extra config file. Returns results/demo."""
    workflow_copy(folder)
    extra = {"ablations": {"table": ["baseline", "d", "shuffled"]}, "evaluation": {"protocol": "reg2rg"},
             **(settings or {})}
    (folder / "goals.yaml").write_text(yaml.safe_dump(extra))
    proc = subprocess.run([str(SNAKEMAKE), "all", "results/demo/ablation/table.md", "--cores", "2",
                           "--configfile", "goals.yaml"], cwd=folder, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return folder / "results" / "demo"


def demo_goals(out: Path) -> dict:
    """The numbers the goals are about, from a finished run's metrics files."""
    full = json.loads((out / "metrics.json").read_text())
    rec = full["region_recognition"]
    ce = {name: json.loads((out / "ablation" / name / "metrics.json").read_text())["clinical_efficacy"]["micro"]["f1"]
          for name in ("baseline", "shuffled")}
    return {"n_scans": full["n_scans"], "n_regions": rec["n_regions"], "accuracy": rec["accuracy"],
            "area_f1": {r["area"]: r["f1"] for r in rec["per_region"]},
            "ce_f1": full["clinical_efficacy"]["micro"]["f1"], "ce_f1_baseline": ce["baseline"],
            "ce_chance": full["clinical_efficacy"]["chance_micro_f1"],
            "ce_f1_shuffled": ce["shuffled"]}


@pytest.mark.slow
def test_demo_reads_the_image(tmp_path):
    out = run_demo_with_controls(tmp_path)
    g = demo_goals(out)
    assert g["n_scans"] == 24 and g["n_regions"] > 200, g
    assert g["accuracy"] >= MIN_ACCURACY, g
    assert len(g["area_f1"]) == 10 and min(g["area_f1"].values()) >= MIN_AREA_F1, g
    assert g["ce_f1"] >= MIN_CE_F1 and g["ce_f1"] >= g["ce_f1_baseline"] + MIN_CE_LEAD, g
    # The control: the same training on images paired with other scans' reports cannot learn which image shows
    # which finding; what the full model writes beyond it comes from the image.
    assert g["ce_f1"] >= g["ce_f1_shuffled"] + MIN_CE_LEAD_OVER_CONTROL, g
    # ... and what it writes is no better than findings given at random at their rates.
    assert g["ce_f1_shuffled"] <= g["ce_chance"] + MAX_CONTROL_OVER_CHANCE, g
    assert g["ce_f1"] >= g["ce_chance"] + MIN_CE_LEAD_OVER_CHANCE, g

    full = json.loads((out / "metrics.json").read_text())
    # The full model of the ablation table is the workflow's own model, not a second training.
    assert not (out / "ablation" / "d" / "model").exists()
    assert json.loads((out / "ablation" / "d" / "metrics.json").read_text())["region_recognition"] == \
        full["region_recognition"]
    table = (out / "ablation" / "table.md").read_text()
    assert "| baseline |" in table and "| d |" in table and "| shuffled |" in table
    # Per finding: support, precision and recall in metrics.json and in the viewer's index.
    per = {r["label"]: r for r in full["clinical_efficacy"]["per_label"]}
    shown = [lab for lab, r in per.items() if r["support"] or r["predicted"]]
    assert len(shown) >= 8, per
    index = (out / "viewer" / "index.html").read_text()
    assert "<h2>Findings</h2>" in index and all(lab in index for lab in shown)
    assert len(list((out / "viewer" / "cases").glob("*.html"))) == full["n_scans"]
