"""evaluate_predictions and `reg2rg evaluate`: one full run (both protocols, Java once) shared by the module,
the command line on a small CSV, input errors, the metrics schema."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from reg2rg.constants import ABNORMALITY_LABELS
from reg2rg.errors import InputError
from reg2rg.evaluate import (LENGTH_PLOT, evaluate_predictions, load_predictions, region_text_groups,
                             validate_metrics, write_metrics)
from reg2rg.evaluate import text_metrics as tm
from reg2rg.evaluate.labelers import RulesLabeler, label_agreement
from reg2rg.rra import build_rra_target, strip_rra

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table():
    ref = [
        build_rra_target([(1, "lung", "Emphysema in both lungs. A 4 mm nodule in the right upper lobe."),
                          (2, "heart", "The heart is enlarged."), (3, "pleura", "No pleural effusion.")]),
        build_rra_target([(1, "heart", "Heart size is normal."), (2, "pleura", "Bilateral pleural effusion."),
                          (3, "lung", "Consolidation in the left lower lobe.")]),
        build_rra_target([(1, "trachea and bronchie", "Trachea and both main bronchi are open."),
                          (2, "lung", "Ground glass opacities in both lungs."),
                          (3, "bone", "Degenerative changes in the thoracic spine.")]),
        "Plain reference: calcified atheroma plaques in the aorta and coronary arteries. Hiatal hernia.",
    ]
    pred = [
        build_rra_target([(1, "lung", "Emphysema in both lungs."), (2, "heart", "Heart size is normal."),
                          (3, "mediastinum", "No pleural effusion.")]),
        build_rra_target([(1, "heart", "Heart size is normal."), (2, "pleura", "Bilateral pleural effusion is seen."),
                          (3, "lung", "Consolidation in the left lower lobe.")]),
        build_rra_target([(1, "trachea and bronchie", "Trachea and main bronchi are open."),
                          (2, "lung", "No nodule.")]),
        "Calcified plaques in the aorta. No hiatal hernia.",
    ]
    return pd.DataFrame({
        "case_id": ["s1", "s2", "s3", "s4"], "reference": ref, "prediction": pred,
        "region_areas": [["lung", "heart", "pleura"], None, ["trachea and bronchie", "lung", "bone"], None],
        "dataset": ["demo"] * 4, "model_preset": ["tiny"] * 4,
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    df = _table()
    metrics = evaluate_predictions(df, protocol="all", out_dir=out,
                                   meta={"decoding": {"num_beams": 1, "do_sample": False}, "config_digest": "abc123"})
    path = write_metrics(metrics, out / "metrics.json")
    return df, metrics, out, path


def test_metrics_valid_and_metadata(run):
    df, m, out, path = run
    validate_metrics(json.loads(path.read_text()))
    assert m["n_scans"] == 4 and m["dataset"] == "demo" and m["model_preset"] == "tiny"
    assert m["decoding"] == {"num_beams": 1, "do_sample": False} and m["config_digest"] == "abc123"
    assert m["protocols"] == ["coco", "reg2rg"]
    assert m["software"]["packages"]["sacrebleu"] and m["software"]["reg2rg"]
    assert m["software"]["git_commit"] is None or len(m["software"]["git_commit"]) == 40


def test_reg2rg_text_on_stripped_reports(run):
    df, m, *_ = run
    refs = [strip_rra(t) for t in df["reference"]]
    preds = [strip_rra(t) for t in df["prediction"]]
    assert not any("The region" in t for t in refs + preds)
    whole = m["text"]["reg2rg"]["whole_report"]
    per = [tm.bleu_13a([p], [r], max_order=1, smooth=True).bleu for p, r in zip(preds, refs)]
    assert whole["n"] == 4 and whole["mean"]["bleu_1"] == pytest.approx(np.mean(per))
    assert whole["overall"]["bleu_4"] == pytest.approx(tm.bleu_13a(preds, refs, max_order=4, smooth=True).bleu)


def test_what_is_left_out_is_counted(run):
    _, m, *_ = run
    assert m["n_scans"] == m["n_scored"] == 4
    assert m["excluded"] == {"empty_reference": 0, "case_ids": {"empty_reference": []},
                             # s3 region 3 (bone) has no prediction; s4 is plain with no region_areas
                             "region_text": {"empty_reference": 0, "empty_prediction": 1},
                             "region_recognition": {"no_true_area": 1}}


def _real_table() -> pd.DataFrame:
    """Real CT-RATE reports: each scan's prediction is another scan's report; scan r4 is in RRA form with a
    prompt region (lung) that its reference has no text for."""
    from conftest import SHARED_DATA

    texts = list(pd.read_csv(SHARED_DATA / "ct-clip-reports" / "train.csv", nrows=6).report_text)
    heart = "Heart contour and size are normal."
    return pd.DataFrame({
        "case_id": ["r1", "r2", "r3", "r4"],
        "reference": texts[:3] + [build_rra_target([(1, "heart", heart)])],
        "prediction": texts[3:6] + [build_rra_target([(1, "heart", heart), (2, "lung", texts[0][:80])])],
        "region_areas": [None, None, None, ["heart", "lung"]],
    })


def test_empty_reference_is_left_out_of_every_metric(tmp_path, caplog):
    """A scan with an empty reference (blank, or RRA prefixes with no text) changes no metric: every number
    equals the table's without it, and metrics.json counts and names it."""
    clean = _real_table()
    empty = pd.DataFrame({"case_id": ["e1", "e2"], "reference": ["  ", "The region 1 is heart: "],
                          "prediction": [clean.reference[0], "The region 1 is heart: The heart is enlarged."],
                          "region_areas": [None, ["heart"]]})
    mixed = pd.concat([clean.iloc[:2], empty.iloc[:1], clean.iloc[2:], empty.iloc[1:]], ignore_index=True)
    caplog.set_level("WARNING", logger="reg2rg.evaluate")
    got = evaluate_predictions(mixed, protocol="reg2rg", meta={"predictions_file": "mixed.parquet"})
    want = evaluate_predictions(clean, protocol="reg2rg")
    assert got["n_scans"] == 6 and got["n_scored"] == want["n_scored"] == 4
    assert got["excluded"]["empty_reference"] == 2 and got["excluded"]["case_ids"] == {"empty_reference": ["e1", "e2"]}
    assert got["excluded"]["region_text"] == want["excluded"]["region_text"] == {"empty_reference": 1,
                                                                                "empty_prediction": 0}
    assert got["excluded"]["region_recognition"] == {"no_true_area": 3}
    for key in ("text", "clinical_efficacy", "region_recognition"):
        assert got[key] == want[key], key
    for side in ("reference", "generated"):
        assert got["lengths"][side] == want["lengths"][side]
    assert got["region_recognition"]["n_regions"] == 2  # r4's heart and its lung (truth from the mask)
    assert "2 scans with an empty reference are left out of every metric: e1, e2" in caplog.text
    with pytest.raises(InputError, match=r"mixed\.parquet: every reference is empty \(2 scans\)"):
        evaluate_predictions(empty, protocol="reg2rg", meta={"predictions_file": "mixed.parquet"})


def test_region_groups_by_true_area(run):
    df, m, *_ = run
    areas = [None if a is None else list(a) for a in df["region_areas"]]
    groups = region_text_groups(list(df["reference"]), list(df["prediction"]), areas)
    # s1 region 3 is pleura (mask) though the prediction calls it mediastinum; s3 region 3 has no prediction
    assert groups["pleura"] == (["No pleural effusion.", "Bilateral pleural effusion is seen."],
                                ["No pleural effusion.", "Bilateral pleural effusion."])
    assert "bone" not in groups and "mediastinum" not in groups
    assert set(m["text"]["reg2rg"]["per_region"]) == set(groups) == set(m["text"]["coco"]["per_region"])
    assert m["text"]["reg2rg"]["per_region"]["lung"]["n"] == 3


def test_coco_section(run):
    _, m, *_ = run
    coco = m["text"]["coco"]
    if tm.java_available() is not None:
        assert coco["available"] is False and coco["reason"]
        return
    assert coco["available"] is True and coco["whole_report"]["n"] == 4
    assert 0 < coco["whole_report"]["bleu_4"] < 1 and 0 < coco["whole_report"]["meteor"] < 1
    # identical region texts: heart in s1/s2 -> s2's heart pair is identical, s1's differs
    assert coco["per_region"]["heart"]["n"] == 2


def test_clinical_efficacy_matches_labeler(run):
    df, m, *_ = run
    lab = RulesLabeler()
    y_ref = lab.label([strip_rra(t) for t in df["reference"]])
    y_gen = lab.label([strip_rra(t) for t in df["prediction"]])
    expect = label_agreement(y_ref, y_gen)
    ce = m["clinical_efficacy"]
    assert ce["labeler"]["name"] == "rules"
    assert ce["micro"] == pytest.approx(expect["micro"]) and ce["macro"] == pytest.approx(expect["macro"])
    rows = {r["label"]: r for r in ce["per_label"]}
    assert [r["label"] for r in ce["per_label"]] == list(ABNORMALITY_LABELS)
    assert rows["Emphysema"]["tp"] == 1 and rows["Cardiomegaly"]["fn"] == 1
    assert rows["Hiatal hernia"]["fn"] == 1 and rows["Pleural effusion"]["tp"] == 1
    # the chance level of the references' label rates: sum of squared supports over (scans x positives)
    support = y_ref.sum(axis=0)
    assert ce["chance_micro_f1"] == pytest.approx((support ** 2).sum() / (len(df) * support.sum()))
    assert 0 < ce["chance_micro_f1"] < 1


def test_recognition_section(run):
    _, m, *_ = run
    rec = m["region_recognition"]
    assert rec["source"] == "mixed"  # s1, s3 from masks; s2 from reference prefixes; s4 has none
    assert rec["n_regions"] == 9 and rec["n_scans"] == 3
    assert rec["accuracy"] == pytest.approx(7 / 9)  # s1 region 3 wrong, s3 region 3 missing


def test_length_plot_beside_metrics(run):
    _, m, out, _ = run
    assert m["lengths"]["plot"] == LENGTH_PLOT
    assert (out / LENGTH_PLOT).read_bytes()[:8] == PNG_MAGIC
    assert m["lengths"]["kl_ref_gen"] > 0
    assert m["lengths"]["reference"]["n"] == 4


def test_kl_is_zero_for_identical_lengths_and_null_when_degenerate():
    from reg2rg.evaluate.plots import length_distributions

    d = length_distributions([10, 20, 30, 25], [10, 20, 30, 25])
    assert d["kl_ref_gen"] == pytest.approx(0.0, abs=1e-9)
    assert sum(d["density_reference"]) * (d["grid"][1] - d["grid"][0]) / (d["grid_points"] - 1) == pytest.approx(1.0)
    shifted = length_distributions([10, 20, 30, 25], [40, 50, 60, 55])
    assert shifted["kl_ref_gen"] > 1
    flat = length_distributions([10, 10], [5, 7])
    assert flat["kl_ref_gen"] is None and "distinct" in flat["kl_reason"]


def test_schema_rejects_broken_metrics(run):
    _, m, *_ = run
    broken = json.loads(json.dumps(m))
    del broken["clinical_efficacy"]["micro"]
    with pytest.raises(jsonschema.ValidationError):
        validate_metrics(broken)
    broken = json.loads(json.dumps(m))
    broken["text"]["reg2rg"]["whole_report"]["mean"]["bleu_4"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        write_metrics(broken, Path("/nonexistent/never-written.json"))


def test_load_predictions_errors(tmp_path):
    p = tmp_path / "preds.csv"
    pd.DataFrame({"case_id": ["a"], "reference": ["x"]}).to_csv(p, index=False)
    with pytest.raises(InputError, match=r"preds\.csv.*prediction"):
        load_predictions(p)
    pd.DataFrame({"case_id": ["a", "a"], "reference": ["x", "y"], "prediction": ["x", "y"]}).to_csv(p, index=False)
    with pytest.raises(InputError, match="not unique"):
        load_predictions(p)
    with pytest.raises(InputError, match="not found"):
        load_predictions(tmp_path / "none.parquet")


def test_parquet_with_list_column(tmp_path):
    df = _table()
    p = tmp_path / "predictions.parquet"
    df.to_parquet(p)
    back = load_predictions(p)
    from reg2rg.evaluate import _parse_areas

    assert _parse_areas(back["region_areas"][0]) == ["lung", "heart", "pleura"]
    assert _parse_areas(back["region_areas"][1]) is None


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "reg2rg", "evaluate", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_cli_on_csv(tmp_path):
    df = _table()
    df["region_areas"] = [json.dumps(a) if a is not None else "" for a in df["region_areas"]]
    src = tmp_path / "predictions.csv"
    df.to_csv(src, index=False)
    out = tmp_path / "res" / "metrics.json"
    r = _cli(["--predictions", str(src), "--out", str(out), "--protocol", "reg2rg",
              "--meta", json.dumps({"config_digest": "d1", "decoding": {"num_beams": 3}})])
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    validate_metrics(m)
    assert m["protocols"] == ["reg2rg"] and "coco" not in m["text"]
    assert m["n_scans"] == 4 and m["dataset"] == "demo" and m["config_digest"] == "d1"
    assert m["decoding"] == {"num_beams": 3} and m["predictions_file"] == str(src)
    assert m["region_recognition"]["source"] == "mixed"
    assert (out.parent / LENGTH_PLOT).read_bytes()[:8] == PNG_MAGIC


def test_cli_without_wordnet_reports_reason(tmp_path):
    src = tmp_path / "predictions.csv"
    pd.DataFrame({"case_id": ["a", "b"], "reference": ["The heart is normal.", "No effusion."],
                  "prediction": ["The heart is normal.", "Pleural effusion."]}).to_csv(src, index=False)
    out = tmp_path / "metrics.json"
    r = _cli(["--predictions", str(src), "--out", str(out), "--protocol", "reg2rg"],
             env={tm.WORDNET_ENV: str(tmp_path / "no-wordnet")})
    assert r.returncode == 0, r.stderr
    whole = json.loads(out.read_text())["text"]["reg2rg"]["whole_report"]
    assert whole["mean"]["meteor"] is None and whole["std"]["meteor"] is None
    assert "no-wordnet" in whole["unavailable"]["meteor"]
    assert whole["mean"]["bleu_1"] == pytest.approx(np.mean([1.0, tm.bleu_13a(["Pleural effusion."], ["No effusion."],
                                                                                max_order=1).bleu]))


def test_cli_input_error_exit_2(tmp_path):
    src = tmp_path / "bad.csv"
    pd.DataFrame({"case_id": ["a"], "text": ["x"]}).to_csv(src, index=False)
    r = _cli(["--predictions", str(src), "--out", str(tmp_path / "m.json")])
    assert r.returncode == 2 and "bad.csv" in r.stderr and "missing column" in r.stderr
