"""RadGenome region reports: folding of anatomy paths, whole reports, problems, header check, Parquet."""
from __future__ import annotations

import csv

import pytest

from reg2rg.constants import REGIONS
from reg2rg.errors import InputError
from reg2rg.region_reports import read_radgenome_region_reports, read_region_reports, write_region_reports

I = {r: i for i, r in enumerate(REGIONS)}

# Rows as RadGenome writes them: whole-report row (empty Anatomy), then top-level and deeper anatomy paths.
ROWS = [
    ("train_1_a_1.nii.gz", "", 'Trachea normal. Heart size is "normal", no effusion, no nodules.'),
    ("train_1_a_1.nii.gz", "trachea and bronchie", "Trachea and both main bronchi are open."),
    ("train_1_a_1.nii.gz", "lung", "Lungs are clear, aerated."),
    ("train_1_a_1.nii.gz", "heart", "Heart size is normal."),
    ("train_1_a_1.nii.gz", "lung/lung/right lung", 'A 3 mm nodule, "stable", in the right lung.'),
    ("train_1_a_1.nii.gz", "heart/heart", "No pericardial effusion."),
    ("train_1_a_1.nii.gz", " Lung ", "No consolidation."),
    ("train_2_a_1.nii.gz", "", "Whole report two."),
    ("train_2_a_1.nii.gz", "spleen", "The spleen is enlarged."),
    ("train_2_a_1.nii.gz", "bone", "Degenerative changes, thoracic spine."),
    ("train_3_b_2.nii.gz", "pleura/pleura/left pleura", "Minimal left pleural effusion."),
    ("train_3_b_2.nii.gz", "abdomen", "Liver unremarkable."),
]


def _write(path, rows, header=("Volumename", "Anatomy", "Sentence")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)  # quotes fields with commas and doubles embedded quotes, as RadGenome's CSV does
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def table(tmp_path):
    return read_radgenome_region_reports(_write(tmp_path / "train_region_report.csv", ROWS))


def test_fold_and_order(table):
    assert list(table.columns) == ["case_id", "report", "region_texts", "problems"]
    assert table["case_id"].tolist() == ["train_1_a_1", "train_2_a_1", "train_3_b_2"]
    r = table.iloc[0]
    assert r["report"] == ROWS[0][2]  # commas and quotes survive
    t = r["region_texts"]
    assert len(t) == 10
    assert t[I["lung"]] == 'Lungs are clear, aerated. A 3 mm nodule, "stable", in the right lung. No consolidation.'
    assert t[I["heart"]] == "Heart size is normal. No pericardial effusion."
    assert t[I["trachea and bronchie"]] == "Trachea and both main bronchi are open."
    for region in ("abdomen", "bone", "breast", "esophagus", "mediastinum", "pleura", "thyroid"):
        assert t[I[region]] is None
    assert r["problems"] == []


def test_unknown_region_recorded_with_row(table):
    r = table.iloc[1]
    assert r["problems"] == ["row 9: unknown region 'spleen'"]
    assert r["region_texts"][I["bone"]] == "Degenerative changes, thoracic spine."
    assert all("spleen" not in (t or "") for t in r["region_texts"])
    assert r["report"] == "Whole report two."


def test_missing_whole_report_is_built_and_noted(table):
    r = table.iloc[2]
    assert r["region_texts"][I["pleura"]] == "Minimal left pleural effusion."
    assert r["report"] == "Liver unremarkable. Minimal left pleural effusion."  # region order
    assert any("no whole-report row" in p for p in r["problems"])


def test_wrong_header_names_file_and_columns(tmp_path):
    bad = _write(tmp_path / "validation_region_report.csv", ROWS, header=("VolumeName", "Anatomy", "Text"))
    with pytest.raises(InputError) as e:
        read_radgenome_region_reports(bad)
    msg = str(e.value)
    assert "validation_region_report.csv" in msg and "Volumename" in msg and "Sentence" in msg
    with pytest.raises(InputError, match="not found"):
        read_radgenome_region_reports(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty.csv"):
        read_radgenome_region_reports(tmp_path / "empty.csv")


def test_parquet_round_trip(table, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "reports" / "region_reports.parquet"
    write_region_reports(table, path)
    schema = pq.read_schema(path)
    assert schema.field("region_texts").type == pa.list_(pa.string())
    assert schema.field("problems").type == pa.list_(pa.string())
    back = read_region_reports(path)
    assert back["case_id"].tolist() == table["case_id"].tolist()
    assert back["report"].tolist() == table["report"].tolist()
    assert back["region_texts"].tolist() == table["region_texts"].tolist()  # None kept inside the lists
    assert back["problems"].tolist() == table["problems"].tolist()
    with pytest.raises(InputError):
        read_region_reports(tmp_path / "nope.parquet")


def test_inventory_reports_concatenates_csvs(tmp_path):
    import pandas as pd

    from reg2rg.region_reports import inventory_reports

    a = _write(tmp_path / "train_region_report.csv", ROWS)
    b = _write(tmp_path / "validation_region_report.csv",
               [("valid_9_a_1.nii.gz", "", "Valid report."), ("valid_9_a_1.nii.gz", "thyroid", "Thyroid normal."),
                ("train_2_a_1.nii.gz", "", "Duplicate scan.")])
    inv = pd.DataFrame({"case_id": ["x", "y", "z"], "report_csv": [a.name, b.name, None]})
    out = inventory_reports(inv, tmp_path).set_index("case_id")
    assert sorted(out.index) == ["train_1_a_1", "train_2_a_1", "train_3_b_2", "valid_9_a_1"]
    assert out.loc["valid_9_a_1", "region_texts"][I["thyroid"]] == "Thyroid normal."
    assert out.loc["train_2_a_1", "report"] == "Whole report two."
    assert any("validation_region_report.csv" in p for p in out.loc["train_2_a_1", "problems"])
    write_region_reports(out.reset_index(), tmp_path / "r.parquet")
    assert len(read_region_reports(tmp_path / "r.parquet")) == 4


def test_deeper_rows_repeating_the_region_text_are_not_duplicated(tmp_path):
    rows = [
        ("train_2_a_1.nii.gz", "", "Whole report."),
        ("train_2_a_1.nii.gz", "lung", "A 10 mm nodule in the left upper lobe. The rest is clear."),
        ("train_2_a_1.nii.gz", "lung/lung/left lung/left upper lobe", "A 10 mm nodule in the left upper lobe."),
        ("train_2_a_1.nii.gz", "heart/heart/pericardium", "No pericardial effusion."),
        ("train_2_a_1.nii.gz", "heart", "Heart size is normal. No pericardial effusion."),
    ]
    df = read_radgenome_region_reports(_write(tmp_path / "r.csv", rows))
    texts = dict(zip(REGIONS, df.region_texts[0]))
    assert texts["lung"] == "A 10 mm nodule in the left upper lobe. The rest is clear."
    assert texts["heart"] == "Heart size is normal. No pericardial effusion."
