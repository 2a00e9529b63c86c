"""Rule evaluate (workflow/rules/evaluate.smk -> workflow/scripts/evaluate.py -> reg2rg.evaluate) on a small
predictions file, and region recognition on malformed generations."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from reg2rg.constants import REGIONS
from reg2rg.evaluate import evaluate_predictions
from reg2rg.evaluate.recognition import MISSING, recognition_metrics, region_pairs
from reg2rg.rra import build_rra_target
from workflow_runs import workflow_copy

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

TEXTS = {"heart": "Heart size is normal. No pericardial effusion.", "lung": "A 6 mm nodule in the right upper lobe.",
         "pleura": "Left pleural effusion.", "bone": "No lytic lesion."}
AREAS = ["heart", "lung", "pleura", "bone"]
REFERENCE = build_rra_target([(i + 1, a, TEXTS[a]) for i, a in enumerate(AREAS)])


def _by_area(metrics):
    return {r["area"]: r for r in metrics["per_region"]}


def test_region_missing_from_prediction_counts_as_missed():
    pred = build_rra_target([(1, "heart", TEXTS["heart"]), (2, "lung", TEXTS["lung"]), (4, "bone", "Normal.")])
    pairs = region_pairs(["c1"], [REFERENCE], [pred], [AREAS])
    assert [(p.index, p.named_area) for p in pairs] == [(1, "heart"), (2, "lung"), (3, MISSING), (4, "bone")]
    m = recognition_metrics(pairs)
    assert m["n_regions"] == 4 and m["accuracy"] == 0.75
    pleura = _by_area(m)["pleura"]
    assert (pleura["tp"], pleura["fn"], pleura["support"], pleura["recall"], pleura["f1"]) == (0, 1, 1, 0.0, 0.0)
    assert "pleura" in m["areas_seen"]  # in the means, as a zero, not skipped
    row = m["confusion"]["true"].index("pleura")
    assert m["confusion"]["counts"][row][m["confusion"]["named"].index(MISSING)] == 1


def test_empty_and_plain_predictions_miss_every_region():
    for pred in ("", "Heart size is normal. No lytic lesion."):
        m = recognition_metrics(region_pairs(["c1"], [REFERENCE], [pred], [AREAS]))
        assert m["n_regions"] == 4 and m["accuracy"] == 0.0
        assert all(r["fn"] == 1 for r in m["per_region"] if r["area"] in AREAS)
        assert m["mean"]["all_regions"]["f1"] == 0.0


def test_malformed_prefixes_in_recognition():
    pred = ("The region 1 is heart the heart is normal. "      # no colon: region 1 not named
            "The region 2 is lung: Nodule. The region 2 is pleura: Effusion. "  # repeated: the first counts
            "The region 3 is liver: Normal. "                  # unknown area
            "The region 4 is bone:")                           # empty text: the name still counts
    pairs = region_pairs(["c1"], [REFERENCE], [pred], [AREAS])
    assert [p.named_area for p in pairs] == [MISSING, "lung", "liver", "bone"]
    m = recognition_metrics(pairs)
    by = _by_area(m)
    assert by["heart"]["fn"] == 1 and by["lung"]["tp"] == 1 and by["bone"]["tp"] == 1
    assert by["pleura"]["fn"] == 1 and by["pleura"]["fp"] == 0  # "liver" is nobody's false positive
    other = m["confusion"]["named"].index("other")
    assert m["confusion"]["counts"][m["confusion"]["true"].index("pleura")][other] == 1


def test_evaluate_predictions_counts_the_missing_region(tmp_path):
    pred = build_rra_target([(1, "heart", TEXTS["heart"]), (2, "lung", TEXTS["lung"]), (4, "bone", TEXTS["bone"])])
    df = pd.DataFrame({"case_id": ["c1", "c2"], "reference": [REFERENCE, REFERENCE], "prediction": [pred, REFERENCE],
                       "region_areas": [AREAS, AREAS]})
    m = evaluate_predictions(df, protocol="reg2rg", meta={"dataset": "t"})
    rec = m["region_recognition"]
    assert rec["n_regions"] == 8 and rec["accuracy"] == 7 / 8
    pleura = {r["area"]: r for r in rec["per_region"]}["pleura"]
    assert (pleura["tp"], pleura["fn"]) == (1, 1)


def _predictions(path: Path):
    refs, preds, areas = [], [], []
    for k in range(3):
        used = [a for a in REGIONS if a in TEXTS]
        refs.append(build_rra_target([(i + 1, a, TEXTS[a]) for i, a in enumerate(used)]))
        named = used if k else list(reversed(used))
        preds.append(build_rra_target([(i + 1, a, TEXTS[used[i]]) for i, a in enumerate(named)]))
        areas.append(used)
    pd.DataFrame({"case_id": [f"c{k}" for k in range(3)], "reference": refs, "prediction": preds,
                  "region_areas": areas, "config_digest": "abc123",
                  "decoding": json.dumps({"num_beams": 1})}).to_parquet(path, index=False)


@pytest.mark.slow
def test_evaluate_rule_writes_metrics_and_plot(tmp_path):
    workflow_copy(tmp_path)
    (tmp_path / "results" / "demo").mkdir(parents=True)
    _predictions(tmp_path / "results" / "demo" / "predictions.parquet")
    proc = subprocess.run([str(SNAKEMAKE), "--cores", "1", "results/demo/metrics.json", "--allowed-rules", "evaluate",
                           "--config", "evaluation={protocol: reg2rg, labeler: rules}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "results" / "demo"
    m = json.loads((out / "metrics.json").read_text())
    assert (out / "report_lengths.png").stat().st_size > 0
    assert m["dataset"] == "demo" and m["model_preset"] == "tiny" and m["config_digest"] == "abc123"
    assert m["decoding"]["num_beams"] == 1 and "batch_size" not in m["decoding"]
    assert m["predictions_file"] == "results/demo/predictions.parquet" and m["protocols"] == ["reg2rg"]
    rec = m["region_recognition"]
    assert rec["n_regions"] == 12 and rec["accuracy"] == pytest.approx(8 / 12)  # c0 names all 4 wrong
    assert (out / "logs" / "evaluate.log").is_file()
