"""Manifest assembly: every inventory scan appears, excluded ones with the reason, and the schema holds."""
import json

import pandas as pd
import pytest

from reg2rg.constants import REGIONS
from reg2rg.errors import InputError
from reg2rg.manifest import build_manifest, read_manifest, validate_manifest, write_manifests


def _inventory(ids_splits):
    return pd.DataFrame([
        {"case_id": c, "split": s, "source_split": "train" if s == "train" else "valid", "image": f"{c}.nii.gz",
         "mask_dir": f"seg_{c}", "report_csv": "r.csv", "labels_csv": None, "intensity_mode": "hu"} for c, s in ids_splits
    ])


def _write_volume_sidecar(d, case):
    d.mkdir(exist_ok=True)
    (d / f"{case}.json").write_text(json.dumps({"output": {
        "size": [10, 12, 5], "spacing": [1.0, 1.0, 3.0], "origin": [0.0, 0.0, 0.0],
        "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}}))


def _write_mask_sidecar(d, case, statuses):
    d.mkdir(exist_ok=True)
    (d / f"{case}.json").write_text(json.dumps({"regions": list(REGIONS), "status": dict(zip(REGIONS, statuses))}))


def _report(case, texts, problems=()):
    return {"case_id": case, "report": "whole", "region_texts": texts, "problems": list(problems)}


@pytest.fixture
def stages(tmp_path):
    vols, masks = tmp_path / "volumes", tmp_path / "masks"
    cases = [("ok", "train"), ("badingest", "train"), ("nomasks", "train"), ("noreport", "test"),
             ("unknownregion", "test"), ("notext", "test")]
    inv = _inventory(cases)
    ingest = pd.DataFrame([{"case_id": c, "status": "ok", "reason": ""} for c, _ in cases if c != "badingest"]
                          + [{"case_id": "badingest", "status": "error", "reason": "/src/badingest.nii.gz: truncated"}])
    present = ["present"] * 10
    for c, _ in cases:
        if c != "badingest":
            _write_volume_sidecar(vols, c)
            _write_mask_sidecar(masks, c, ["missing"] * 5 + ["empty"] * 5 if c == "nomasks" else present)
    mask_status = pd.DataFrame([{"case_id": c, "status": "ok", "reason": ""} for c, _ in cases if c != "badingest"])
    texts = ["t"] * 10
    reports = pd.DataFrame([
        _report("ok", [None] * 9 + ["trachea text"], ["no whole-report row; report joined from the region sentences"]), _report("badingest", texts), _report("nomasks", texts),
        _report("unknownregion", texts, ["row 7: unknown region 'spleen'"]), _report("notext", [None] * 10),
        _report("orphan", texts),
    ])
    labels = pd.DataFrame({"case_id": ["ok"], "labels": [[0, 1] * 9]})
    return inv, ingest, mask_status, reports, labels, vols, masks


def test_every_scan_appears_with_reasons(stages):
    m = build_manifest(*stages).set_index("case_id")
    assert sorted(m.index) == sorted(stages[0].case_id)  # the orphan report row is not a scan
    assert m.loc["ok", "status"] == "included" and m.loc["ok", "reason"] == ""
    assert m.loc["ok", "regions_usable"] == ["trachea and bronchie"]
    assert m.loc["ok", "notes"] == ["report: no whole-report row; report joined from the region sentences"]
    assert m.loc["ok", "labels"] == [0, 1] * 9 and m.loc["ok", "size"] == [10, 12, 5]
    assert "truncated" in m.loc["badingest", "reason"] and pd.isna(m.loc["badingest", "volume"])
    assert "no usable region mask" in m.loc["nomasks", "reason"] and "abdomen missing" in m.loc["nomasks", "reason"]
    assert m.loc["noreport", "reason"] == "no report for this scan"
    assert "unknown region 'spleen'" in m.loc["unknownregion", "reason"]
    assert m.loc["notext", "reason"] == "no region has both a non-empty mask and a text"
    assert (m.drop(index="ok").status == "excluded").all()


def test_parquet_round_trip_and_schema(stages, tmp_path):
    m = build_manifest(*stages)
    paths = {"train": str(tmp_path / "m" / "train.parquet"), "test": str(tmp_path / "m" / "test.parquet")}
    write_manifests(m, paths)
    train = read_manifest(paths["train"])
    assert set(train.split) == {"train"} and len(train) == 3
    assert list(read_manifest(paths["train"], included_only=True).case_id) == ["ok"]
    broken = train.copy()
    broken.loc[0, "status"] = "maybe"
    with pytest.raises(InputError, match=r"row 0 .*status"):
        validate_manifest(broken, "x.parquet")


def test_reports_paired_with_other_scans_is_a_seeded_derangement():
    from reg2rg.manifest import paired_with_other_reports

    n = 9
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "volume": [f"v{i}" for i in range(n)],
                       "report": [f"report {i}" for i in range(n)],
                       "region_texts": [[f"text {i}"] * 10 for i in range(n)], "labels": [[i % 2] * 18 for i in range(n)]})
    out = paired_with_other_reports(df, seed=3)
    assert out.case_id.tolist() == df.case_id.tolist() and out.volume.tolist() == df.volume.tolist()
    donor = [int(r.split()[1]) for r in out.report]
    assert sorted(donor) == list(range(n)) and all(d != i for i, d in enumerate(donor))  # every report used once
    for i, d in enumerate(donor):  # the whole report of the donor scan moves together
        assert list(out.region_texts[i]) == [f"text {d}"] * 10 and list(out.labels[i]) == [d % 2] * 18
    assert paired_with_other_reports(df, seed=3).report.tolist() == out.report.tolist()
    assert paired_with_other_reports(df, seed=4).report.tolist() != out.report.tolist()
    with pytest.raises(InputError, match="at least two"):
        paired_with_other_reports(df.iloc[:1], seed=0)
