"""`reg2rg report` on a real DICOM series (cip-ct64) with a tiny untrained model: the plumbing, the JSON against
its schema, the grounding flags, the HTML page (opened in headless Chromium, overlay colours counted in a
screenshot), no identifiers, and the error cases."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, needs_fixtures
from reg2rg.cli import main
from reg2rg.constants import REGIONS
from reg2rg.errors import ConfigError, InputError
from reg2rg.generate import GenerationSettings
from reg2rg.scan_report import build_report, make_report, validate_report
from reg2rg.viewer import REGION_COLORS

CIP = SHARED_DATA / "cip-ct64"
DICOM = CIP / "ct-64Dicom"
pytestmark = needs_fixtures(CIP)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPORTS = [
    "The lungs are clear. No nodule. No pleural effusion.",
    "Heart size is normal. No pericardial effusion. The trachea and bronchi are patent.",
    "Mild emphysema in both upper lobes. The mediastinum is unremarkable.",
    "Degenerative changes of the thoracic spine. The thyroid is normal. The esophagus is normal.",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from reg2rg.model import build_model, load_preset, save_trained, train_tiny_tokenizer

    base = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    tok = train_tiny_tokenizer(REPORTS * 5, 320, base / "tok")
    model = build_model(load_preset("tiny"), tok, load_pretrained_vision=False)
    return save_trained(model, base / "model")


@pytest.fixture(scope="module")
def masks_dir(tmp_path_factory):
    """A RadGenome-style masks folder: the cip-ct64 whole-lung label as `lung.nii.gz` (on its own grid)."""
    d = tmp_path_factory.mktemp("masks")
    lung = sitk.ReadImage(str(CIP / "wholeLung-64.nrrd"))
    sitk.WriteImage(sitk.Cast(lung > 0, sitk.sitkUInt8), str(d / "lung.nii.gz"))
    return d


@pytest.fixture(scope="module")
def made(tiny_model, masks_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rc = main(["report", "--model", str(tiny_model), "--ct", str(DICOM), "--masks", str(masks_dir),
               "--out", str(out / "report.json"), "--html", str(out / "report.html"), "--max-new-tokens", "24"])
    assert rc == 0
    return out


def test_report_json_is_valid_and_grounded_per_region(made):
    report = json.loads((made / "report.json").read_text())
    validate_report(report)
    assert [r["mask_area"] for r in report["regions"]] == ["lung"]
    lung = report["regions"][0]
    assert lung["index"] == 1 and lung["mask_voxels"] > 1000
    assert lung["agrees"] == (lung["named_area"] == "lung")
    assert lung["grounded"] == (lung["agrees"] and bool(lung["text"]))
    assert report["masks"]["lung"] == "present" and report["masks"]["heart"] == "missing"
    assert report["decoding"]["max_new_tokens"] == 24 and report["decoding"]["do_sample"] is False
    assert report["case"]["input_format"] == "dicom" and report["case"]["name"] == "scan-" + report["case"]["input_sha256"][:12]
    assert report["model"]["input_size"] == [64, 64, 16]
    text = (made / "report.json").read_text()
    assert str(DICOM) not in text and "ct-64Dicom" not in text


def test_flags_follow_the_named_area():
    row = {"prediction": "The region 1 is lung: Clear. The region 2 is heart: Normal. The region 5 is bone: x",
           "regions": [{"index": 1, "named_area": "lung", "text": "Clear."},
                       {"index": 2, "named_area": "heart", "text": "Normal."},
                       {"index": 5, "named_area": "bone", "text": "x"}],
           "region_areas": ["lung", "pleura", "thyroid"], "finished": True, "generated_tokens": 30}
    side = {"voxels": {r: 10 for r in REGIONS}, "status": {r: "present" for r in REGIONS}}
    case = {"name": "scan-" + "0" * 12, "input_sha256": "0" * 64, "input_format": "nifti", "size": [2, 2, 2],
            "spacing": [1.0, 1.0, 3.0]}
    model = {"name": "m", "preset": "tiny", "dataset": None, "config_digest": None, "input_size": [64, 64, 16]}
    rep = build_report(row, side, case, model, GenerationSettings().decoding())
    validate_report(rep)
    assert [(r["grounded"], r["flags"]) for r in rep["regions"]] == [
        (True, []), (False, ["area_mismatch"]), (False, ["not_generated"])]
    assert rep["summary"]["not_grounded"] == [2, 3]
    assert rep["unprompted"] == [{"index": 5, "named_area": "bone", "text": "x"}]


def test_page_is_self_contained_without_identifiers(made):
    import pydicom

    page = (made / "report.html").read_text()
    assert "data:image/png;base64," in page and 'src="http' not in page and "<script" not in page
    assert "lung" in page and ("NOT GROUNDED" in page or "grounded" in page)
    ds = pydicom.dcmread(str(sorted(DICOM.iterdir())[0]), stop_before_pixels=True)
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber",
                "InstitutionName", "StudyDate"):
        value = str(ds.get(tag, "") or "").strip()
        if len(value) >= 4:
            assert value not in page, tag
    assert str(DICOM) not in page and "IMG0001" not in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_page_screenshot_shows_the_overlay_colours(made, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1400,1600", "--force-device-scale-factor=1",
                    (made / "report.html").as_uri()], check=True, capture_output=True, timeout=60)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def near(color):
        return int((np.abs(rgb - np.asarray(color)).sum(axis=2) <= 12).sum())

    assert near(REGION_COLORS["lung"]) > 300  # contour pixels of the lung mask in two views
    for region in ("heart", "thyroid", "esophagus"):  # no mask: their colour appears nowhere
        assert near(REGION_COLORS[region]) < 20, region


def _label_file(masks_dir: Path, path: Path, declared: bool = True) -> Path:
    """The lung mask of `masks_dir` as a reg2rg label file (as the masks stage writes it, or, not declared, as
    a bare bit-packed image)."""
    from reg2rg.geometry import grid_record
    from reg2rg.masks import pack_masks, write_label_file

    lung = sitk.ReadImage(str(masks_dir / "lung.nii.gz"))
    arr = np.zeros((len(REGIONS),) + sitk.GetArrayFromImage(lung).shape, bool)
    arr[REGIONS.index("lung")] = sitk.GetArrayFromImage(lung) > 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if declared:
        geom = grid_record(lung)
        write_label_file(pack_masks(arr), geom, path)
    else:
        label = sitk.GetImageFromArray(pack_masks(arr))
        label.CopyInformation(lung)
        sitk.WriteImage(label, str(path))
    return path


def test_label_file_masks_give_the_same_regions(tiny_model, masks_dir, made, tmp_path):
    _label_file(masks_dir, tmp_path / "lab" / "case.nii.gz")
    rep = make_report(tiny_model, DICOM, tmp_path / "r.json", masks=tmp_path / "lab",
                      settings=GenerationSettings(batch_size=1, max_new_tokens=24))
    first = json.loads((made / "report.json").read_text())
    assert rep["regions"][0]["mask_voxels"] == first["regions"][0]["mask_voxels"]
    assert rep["report"] == first["report"]  # same inputs, greedy: same text


def test_errors(tiny_model, masks_dir, tmp_path, caplog):
    settings = GenerationSettings(batch_size=1, max_new_tokens=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no usable masks") as e:
        make_report(tiny_model, DICOM, tmp_path / "a.json", masks=tmp_path / "empty", settings=settings)
    assert str(tmp_path / "empty") in str(e.value)
    blank = tmp_path / "blank"
    blank.mkdir()
    lung = sitk.ReadImage(str(masks_dir / "lung.nii.gz"))
    sitk.WriteImage(lung * 0, str(blank / "lung.nii.gz"))
    with pytest.raises(InputError, match="no usable masks.*lung empty"):
        make_report(tiny_model, DICOM, tmp_path / "b.json", masks=blank, settings=settings)
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="scan.nii.gz"):
        make_report(tiny_model, bad, tmp_path / "c.json", masks=masks_dir, settings=settings)
    not_model = tmp_path / "not_model"
    not_model.mkdir()
    with pytest.raises(InputError, match="not a reg2rg model folder"):
        make_report(not_model, DICOM, tmp_path / "d.json", masks=masks_dir, settings=settings)
    with pytest.raises(ConfigError, match="SAT must be configured"):
        make_report(tiny_model, DICOM, tmp_path / "e.json", segmenter="sat", settings=settings)
    assert not any((tmp_path / n).exists() for n in ("a.json", "b.json", "c.json", "d.json", "e.json"))
    # the command line: exit status 2 and the message names the path
    rc = main(["report", "--model", str(not_model), "--ct", str(DICOM), "--masks", str(masks_dir),
               "--out", str(tmp_path / "f.json")])
    assert rc == 2 and str(not_model) in caplog.text


@pytest.fixture(scope="module")
def cip_volume(tmp_path_factory):
    from reg2rg.ingest import ingest

    out = tmp_path_factory.mktemp("vol") / "scan.nii.gz"
    ingest(DICOM, out)
    return out


def test_masks_that_are_not_a_label_file_are_refused(cip_volume, masks_dir, tmp_path):
    """A single-file --masks must be a label file that declares itself: the binary lung mask, another tool's
    label map (cip-ct64's lm-64.nrrd) and a bare bit-packed image are refused, naming the file; a misnamed
    region file in a folder too. Before, the lung mask read as bit 0: "abdomen"."""
    from reg2rg.scan_report import place_masks

    cases = {
        CIP / "wholeLung-64.nrrd": r"binary mask \(values 0, 1\)",
        CIP / "lm-64.nrrd": r"distinct values from 0 to \d+: another tool's label map",
        _label_file(masks_dir, tmp_path / "bare" / "case.nii.gz", declared=False): "binary mask|distinct values",
    }
    misnamed = tmp_path / "misnamed"
    misnamed.mkdir()
    shutil.copy(masks_dir / "lung.nii.gz", misnamed / "lungs.nii.gz")
    cases[misnamed] = "binary mask"
    for i, (masks, looks) in enumerate(cases.items()):
        with pytest.raises(InputError, match="not a reg2rg region label file") as err:
            place_masks(cip_volume, masks, tmp_path / f"m{i}.nii.gz", tmp_path / f"w{i}")
        text = str(err.value)
        assert re.search(looks, text), text
        assert "{region}.nii.gz" in text and "reg2rg region labels v1" in text
        named = misnamed / "lungs.nii.gz" if masks == misnamed else masks
        assert err.value.path == str(named)
        assert not (tmp_path / f"m{i}.nii.gz").exists()
    good = place_masks(cip_volume, _label_file(masks_dir, tmp_path / "lab" / "case.nii.gz"), tmp_path / "ok.nii.gz",
                       tmp_path / "w")
    assert good["status"]["lung"] == "present" and good["status"]["abdomen"] == "missing"


def test_truncated_region_mask_is_an_error_not_half_a_mask(cip_volume, masks_dir, tmp_path):
    from reg2rg.masks import read_region_masks
    from reg2rg.scan_report import place_masks

    folder = tmp_path / "cut"
    folder.mkdir()
    shutil.copy(masks_dir / "lung.nii.gz", folder / "lung.nii.gz")
    data = (masks_dir / "lung.nii.gz").read_bytes()
    (folder / "heart.nii.gz").write_bytes(data[: len(data) // 2])
    side = place_masks(cip_volume, folder, tmp_path / "m.nii.gz", tmp_path / "w")
    assert side["status"]["heart"] == "error: truncated or corrupt file" and side["voxels"]["heart"] == 0
    assert "truncated" in side["notes"]["heart"] and side["status"]["lung"] == "present"
    # a truncated label file is refused, not read as part of one
    cut = tmp_path / "cut_label" / "m.nii.gz"
    cut.parent.mkdir()
    full = (tmp_path / "m.nii.gz").read_bytes()
    cut.write_bytes(full[: len(full) // 2])
    shutil.copy(tmp_path / "m.json", cut.with_name("m.json"))
    with pytest.raises(InputError, match="truncated") as err:
        read_region_masks(cut)
    assert err.value.path == str(cut)
    with pytest.raises(InputError, match="truncated"):
        place_masks(cip_volume, cut, tmp_path / "m2.nii.gz", tmp_path / "w2")


def test_report_output_over_an_input_is_refused(tiny_model, masks_dir, tmp_path):
    ct = tmp_path / "ct.nrrd"
    shutil.copy(CIP / "ct-64.nrrd", ct)
    before = ct.read_bytes()
    base = ["report", "--model", str(tiny_model), "--masks", str(masks_dir)]
    assert main(base + ["--ct", str(ct), "--out", str(ct)]) == 2
    assert main(base + ["--ct", str(DICOM), "--out", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.json")]) == 2
    assert main(base + ["--ct", str(DICOM), "--out", str(masks_dir / "lung.nii.gz")]) == 2
    assert ct.read_bytes() == before and not (tmp_path / "r.json").exists()
