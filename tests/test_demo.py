"""Synthetic demo data (reg2rg.demo): real files in both layouts, read back with the libraries the pipeline
uses. Small shapes keep the whole module at a few seconds."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from reg2rg import demo
from reg2rg.constants import ABNORMALITY_LABELS, REGIONS

SMALL = (112, 96, 32)  # nominal x y z for the tests (the default is 192 x 160 x 56)

# What the region text of a case holding each finding must say.
MENTIONS = {
    "Lung nodule": ("lung", r"nodule"),
    "Emphysema": ("lung", r"emphysem"),
    "Consolidation": ("lung", r"consolidat"),
    "Pleural effusion": ("pleura", r"effusion"),
    "Cardiomegaly": ("heart", r"cardiomegaly"),
    "Pericardial effusion": ("heart", r"pericardial effusion"),
    "Arterial wall calcification": ("mediastinum", r"calcif"),
    "Lymphadenopathy": ("mediastinum", r"lymph"),
    "Hiatal hernia": ("esophagus", r"hiatal hernia"),
}


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _csv(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def radgenome(tmp_path_factory):
    out = tmp_path_factory.mktemp("radgenome")
    summary = demo.make_demo_dataset("radgenome", out, cases=12, seed=0, shape=SMALL)
    return out, summary


@pytest.fixture(scope="module")
def ctrg(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctrg")
    summary = demo.make_demo_dataset("ctrg", out, cases=4, seed=3, test_fraction=0.25, shape=SMALL)
    return out, summary


def _volume(out: Path, case_id: str) -> Path:
    split, n = case_id.split("_")[:2]
    return out / f"{split}_preprocessed" / f"{split}_{n}" / f"{split}_{n}a" / f"{case_id}.nii.gz"


def _mask(out: Path, case_id: str, region: str) -> Path:
    return out / f"{case_id.split('_')[0]}_region_mask" / f"seg_{case_id}" / f"{region}.nii.gz"


def test_same_seed_gives_byte_identical_files(tmp_path):
    for layout in demo.LAYOUTS:
        a = demo.make_demo_dataset(layout, tmp_path / f"{layout}_a", cases=3, seed=11, shape=(64, 56, 16))
        # drawn by two processes: the same files
        b = demo.make_demo_dataset(layout, tmp_path / f"{layout}_b", cases=3, seed=11, shape=(64, 56, 16), workers=2)
        assert a == b
        fa, fb = _files(tmp_path / f"{layout}_a"), _files(tmp_path / f"{layout}_b")
        assert fa.keys() == fb.keys() and len(fa) > 5
        assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]
    other = demo.make_demo_dataset("radgenome", tmp_path / "other", cases=3, seed=12, shape=(64, 56, 16))
    vol = "train_preprocessed/train_1/train_1a/train_1_a_1.nii.gz"
    assert (tmp_path / "other" / vol).read_bytes() != (tmp_path / "radgenome_a" / vol).read_bytes()
    assert other["splits"]


def test_make_phantom_is_deterministic_and_plausible():
    out1 = demo.make_phantom(np.random.default_rng(7), (96, 80, 24), findings=["lung_nodule"])
    out2 = demo.make_phantom(np.random.default_rng(7), (96, 80, 24), findings=["lung_nodule"])
    hu, masks, findings, geometry = out1
    assert hu.dtype == np.int16 and hu.shape == (24, 80, 96)
    assert np.array_equal(hu, out2[0]) and findings == out2[2]
    assert set(masks) == set(REGIONS) and all(m.shape == hu.shape and m.any() for m in masks.values())
    assert geometry.size == (96, 80, 24) and geometry.spacing == demo.DEFAULT_SPACING
    assert abs(np.median(hu[0, :3, :3]) - demo.HU_AIR) < 40  # air outside the body
    assert [f["kind"] for f in findings] == ["lung_nodule"] and findings[0]["label"] == "Lung nodule"
    # the nodule is solid tissue inside the lung mask
    z, y, x = findings[0]["center_index_zyx"]
    assert hu[z, y, x] > -300 and masks["lung"][z, y, x]
    # a tiny grid still holds every region and every finding
    hu, masks, findings, _ = demo.make_phantom(np.random.default_rng(1), (32, 28, 12), findings=demo.FINDING_KINDS)
    assert {f["kind"] for f in findings} == set(demo.FINDING_KINDS)


def test_write_report_labels_and_phrasings():
    findings = [{"kind": "pleural_effusion", "label": "Pleural effusion", "region": "pleura", "side": "left",
                 "depth_mm": 14},
                {"kind": "medical_material", "label": "Medical material", "region": "bone",
                 "device": "sternotomy wires"}]
    texts, whole, labels = demo.write_report(findings, np.random.default_rng(0))
    assert list(labels) == list(ABNORMALITY_LABELS)
    assert {k for k, v in labels.items() if v} == {"Pleural effusion", "Medical material"}
    assert "effusion" in texts["pleura"] and "14 mm" in texts["pleura"] and "left" in texts["pleura"].lower()
    assert "wire" in texts["bone"]
    assert set(texts) == set(REGIONS) and all(t in whole for t in texts.values())
    # several phrasings per finding and per normal region
    seen = {demo.write_report(findings, np.random.default_rng(s))[0]["pleura"] for s in range(30)}
    normal = {demo.write_report([], np.random.default_rng(s))[0]["heart"] for s in range(30)}
    assert len(seen) >= 2 and len(normal) >= 2
    texts, _, _ = demo.write_report([], np.random.default_rng(0), omit_regions=["breast"])
    assert "breast" not in texts


def test_fixed_report_style_is_a_function_of_the_findings():
    findings = [{"kind": "pleural_effusion", "label": "Pleural effusion", "region": "pleura", "side": "left",
                 "depth_mm": 14},
                {"kind": "lung_nodule", "label": "Lung nodule", "region": "lung", "side": "right",
                 "lobe": "upper lobe", "size_mm": 21}]
    reports = {demo.write_report(findings, np.random.default_rng(s), style="fixed")[1] for s in range(30)}
    assert len(reports) == 1  # no phrasing, measurement or residual sentence drawn per case
    texts, _, labels = demo.write_report(findings, np.random.default_rng(0), style="fixed")
    assert texts["pleura"] == "Left pleural effusion is seen."
    assert texts["lung"] == "A solid nodule is seen in the upper lobe of the right lung."
    assert not re.search(r"\d+ mm", " ".join(texts.values()))
    assert {k for k, v in labels.items() if v} == {"Pleural effusion", "Lung nodule"}
    normal = {demo.write_report([], np.random.default_rng(s), style="fixed")[0]["heart"] for s in range(30)}
    assert len(normal) == 1
    # every finding kind has a fixed sentence that the labels' mentions match
    every = demo.make_phantom(np.random.default_rng(1), (32, 28, 12), findings=demo.FINDING_KINDS)[2]
    texts, whole, labels = demo.write_report(every, np.random.default_rng(0), style="fixed")
    for label, (region, pattern) in MENTIONS.items():
        assert labels[label] == 1 and re.search(pattern, texts[region], re.IGNORECASE), label
    with pytest.raises(ValueError, match="report style"):
        demo.write_report(findings, np.random.default_rng(0), style="plain")


def test_radgenome_paths_and_tables(radgenome):
    out, summary = radgenome
    assert set(summary["splits"]) == {"train", "valid"}
    assert len(summary["splits"]["train"]) == 9 and len(summary["splits"]["valid"]) == 3
    ids = summary["splits"]["train"] + summary["splits"]["valid"]
    assert all(re.fullmatch(r"(train|valid)_\d+_a_1", i) for i in ids)
    for case_id in ids:
        assert _volume(out, case_id).is_file()
        for region in REGIONS:
            exists = _mask(out, case_id, region).is_file()
            assert exists == (region not in summary["missing_masks"].get(case_id, []))
    assert (out / "train_region_mask" / f"seg_{summary['splits']['train'][0]}" / "trachea and bronchie.nii.gz"
            ).parent.is_dir()

    for split, name in (("train", "train_region_report.csv"), ("valid", "validation_region_report.csv")):
        header, rows = _csv(out / name)
        assert header == ["Volumename", "Anatomy", "Sentence"]
        names = {r["Volumename"] for r in rows}
        assert names == {f"{i}.nii.gz" for i in summary["splits"][split]}
        whole = [r for r in rows if r["Anatomy"] == ""]
        assert len(whole) == len(names)  # one whole-report row per scan
        tops = {r["Anatomy"] for r in rows if r["Anatomy"] and "/" not in r["Anatomy"]}
        deeper = [r for r in rows if "/" in r["Anatomy"]]
        assert tops <= set(REGIONS) and deeper
        assert all(r["Anatomy"].split("/")[0] in REGIONS for r in deeper)
        by_case = {}
        for r in rows:
            by_case.setdefault(r["Volumename"], {})[r["Anatomy"]] = r["Sentence"]
        for vol, anat in by_case.items():
            for path, sentence in anat.items():  # a finer row repeats sentences of its region's row
                if "/" in path:
                    assert sentence in anat[path.split("/")[0]]
            for region in REGIONS:
                if region in anat:
                    assert anat[region] in anat[""]
        header, labels = _csv(out / "multi_abnormality_labels" / f"{split}_predicted_labels.csv")
        assert header == ["VolumeName"] + list(ABNORMALITY_LABELS)
        assert {r["VolumeName"] for r in labels} == names
        assert all(r[k] in ("0", "1") for r in labels for k in ABNORMALITY_LABELS)
    # some normal regions have no text in some scans
    assert summary["regions_without_text"]
    saved = json.loads((out / demo.SUMMARY_FILE).read_text())
    assert saved["missing_masks"] == summary["missing_masks"] and "patient_names" not in saved


def test_radgenome_missing_and_empty_masks(radgenome):
    out, summary = radgenome
    assert summary["missing_masks"] and summary["empty_masks"]
    for case_id, regions in summary["empty_masks"].items():
        for region in regions:
            assert _read(_mask(out, case_id, region)).max() == 0
    for case_id in summary["labels"]:
        faulty = summary["missing_masks"].get(case_id, []) + summary["empty_masks"].get(case_id, [])
        assert len(faulty) < len(REGIONS)


def test_radgenome_masks_lie_on_their_anatomy(radgenome):
    out, summary = radgenome
    for case_id in list(summary["labels"])[:6]:
        vol = sitk.ReadImage(str(_volume(out, case_id)))
        hu = sitk.GetArrayFromImage(vol)
        assert hu.dtype == np.int16
        assert vol.GetSpacing() == pytest.approx(demo.DEFAULT_SPACING)
        assert vol.GetOrigin() == pytest.approx(summary["geometry"][case_id]["origin"])
        assert list(vol.GetSize()) == summary["geometry"][case_id]["size"]
        assert abs(float(np.median(hu[:, :2, :2])) - demo.HU_AIR) < 40
        for region in REGIONS:
            path = _mask(out, case_id, region)
            if not path.is_file() or region in summary["empty_masks"].get(case_id, []):
                continue
            img = sitk.ReadImage(str(path))
            assert img.GetSize() == vol.GetSize() and img.GetOrigin() == vol.GetOrigin()
            assert img.GetSpacing() == vol.GetSpacing() and img.GetDirection() == vol.GetDirection()
            m = sitk.GetArrayFromImage(img)
            assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}, (case_id, region)
            mean = float(hu[m > 0].mean())
            if region == "lung":
                assert mean < -600, (case_id, mean)
            elif region == "bone":
                assert mean > 200, (case_id, mean)
            elif region == "heart":
                assert 0 < mean < 100, (case_id, mean)
            elif region == "thyroid":
                assert mean > 40, (case_id, mean)  # iodine-rich gland
        # anatomy where it belongs: thyroid in the upper slices, abdomen in the lower ones
        zt = np.flatnonzero(_read(_mask(out, case_id, "thyroid")).any(axis=(1, 2))) \
            if _mask(out, case_id, "thyroid").is_file() else []
        if len(zt):
            assert zt.min() > hu.shape[0] // 2


def test_labels_agree_with_reports_and_images(radgenome):
    out, summary = radgenome
    texts = {}
    for name in ("train_region_report.csv", "validation_region_report.csv"):
        for r in _csv(out / name)[1]:
            texts.setdefault(r["Volumename"][: -len(".nii.gz")], {})[r["Anatomy"]] = r["Sentence"]
    effusion_seen = normal_seen = False
    for case_id, labels in summary["labels"].items():
        present = {k for k, v in labels.items() if v}
        assert present == {demo.FINDINGS[k][0] for k in summary["findings"][case_id]}
        for label in present:
            if label in MENTIONS:
                region, pattern = MENTIONS[label]
                assert re.search(pattern, texts[case_id][region], re.IGNORECASE), (case_id, label)
        if "Medical material" in present:
            assert re.search(r"catheter|wire", texts[case_id][""], re.IGNORECASE)
        for label in ABNORMALITY_LABELS:  # labels no phantom finding produces stay 0
            if label not in {v[0] for v in demo.FINDINGS.values()}:
                assert labels[label] == 0
        if "pleura" in summary["missing_masks"].get(case_id, []) + summary["empty_masks"].get(case_id, []):
            continue
        hu = _read(_volume(out, case_id))
        pleura = _read(_mask(out, case_id, "pleura")) > 0
        fluid = int(((hu >= -30) & (hu <= 60) & pleura).sum())
        if "Pleural effusion" in present:
            assert fluid > 300, (case_id, fluid)
            effusion_seen = True
        else:
            assert fluid < 0.05 * pleura.sum(), (case_id, fluid)
            normal_seen = True
    assert effusion_seen and normal_seen


def test_ctrg_layout_dicom_and_identifiers(ctrg):
    out, summary = ctrg
    ann = json.loads((out / "annotation.json").read_text())
    assert set(ann) == {"train", "test"} and len(ann["train"]) == 3 and len(ann["test"]) == 1
    assert not (out / "train_region_mask").exists()
    header, labels = _csv(out / "labels.csv")
    assert header == ["id"] + list(ABNORMALITY_LABELS) and len(labels) == 4
    names, ids = summary["patient_names"], summary["patient_ids"]
    assert len(set(names)) == 4 and len(set(ids)) == 4
    saved = (out / demo.SUMMARY_FILE).read_text() + (out / "annotation.json").read_text()
    assert not any(n in saved or n.split("^")[0] in saved for n in names)
    plans = {p.case_id: p for p in demo.plan_dataset("ctrg", 4, 3, 0.25, SMALL)}
    for entry in ann["train"] + ann["test"]:
        assert entry["image_path"] == f"images/{entry['id']}" and entry["report"].strip()
        folder = out / entry["image_path"]
        files = sorted(folder.glob("IM*.dcm"))
        assert files[0].name == "IM0001.dcm"
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        img = reader.Execute()
        geom = summary["geometry"][entry["id"]]
        assert list(img.GetSize()) == geom["size"] and len(files) == geom["size"][2]
        assert img.GetSpacing() == pytest.approx(geom["spacing"])
        assert img.GetOrigin() == pytest.approx(geom["origin"], abs=1e-3)
        assert img.GetDirection() == pytest.approx(demo.IDENTITY_DIRECTION)
        expected = demo.render_case(plans[entry["id"]], 3).hu
        assert np.array_equal(sitk.GetArrayFromImage(img).astype(np.int32), expected.astype(np.int32))
        ds = pydicom.dcmread(files[0])
        assert str(ds.PatientName) in names and ds.PatientID in ids
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert ds.pixel_array.min() >= 0
        last = pydicom.dcmread(files[-1], stop_before_pixels=True)
        assert float(last.ImagePositionPatient[2]) > float(ds.ImagePositionPatient[2])
        assert last.SeriesInstanceUID == ds.SeriesInstanceUID and last.SOPInstanceUID != ds.SOPInstanceUID


def test_rerun_replaces_previous_cases(tmp_path):
    demo.make_demo_dataset("radgenome", tmp_path, cases=4, seed=1, shape=(48, 40, 12))
    summary = demo.make_demo_dataset("radgenome", tmp_path, cases=2, seed=1, shape=(48, 40, 12))
    vols = sorted(p.name for p in tmp_path.rglob("*_a_1.nii.gz"))
    assert len(vols) == 2 and len(summary["labels"]) == 2


def test_cli_writes_a_data_set(tmp_path):
    from reg2rg.cli import main

    assert main(["demo-data", "--layout", "radgenome", "--cases", "2", "--seed", "4", "--shape", "48", "40", "12",
                 "--report-style", "fixed", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / demo.SUMMARY_FILE).read_text())
    assert summary["shape"] == [48, 40, 12] and sum(len(v) for v in summary["splits"].values()) == 2
    assert summary["report_style"] == "fixed"
    with pytest.raises(ValueError, match="layout"):
        demo.make_demo_dataset("nifti", tmp_path / "x", cases=1, seed=0)
