"""SAT for one scan (reg2rg.segment.sat.run_sat_case, `reg2rg report --segmenter sat`): the stand-in SAT
checkout of test_ctrg (a program speaking SAT's file formats, started with torchrun) segments an ingested
cip-ct64 volume; the masks land on the ingested grid, voxel for voxel; missing settings and a failing SAT
are errors that name the key or show SAT's log."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from conftest import SHARED_DATA, needs_fixtures
from reg2rg.constants import REGIONS
from reg2rg.errors import ConfigError, InputError
from reg2rg.segment.sat import SAT_DEFAULTS, sat_command, run_sat_case
from standins import FAKE_SAT_INFERENCE, sat_standin_checkout

CT = SHARED_DATA / "cip-ct64" / "ct-64.nrrd"
pytestmark = needs_fixtures(CT)
PROMPTS = {"heart": ["heart"], "bone": ["sternum", "rib 1"], "abdomen": ["liver"]}


def _fake_sat(root: Path, program: str = FAKE_SAT_INFERENCE) -> dict:
    """SAT settings naming a stand-in checkout that runs `program` (the stand-in SAT by default)."""
    repo = sat_standin_checkout(root / "SAT", program)
    (root / "sat.pth").write_text("weights")
    return {"repo": str(repo), "checkpoint": str(root / "sat.pth"), "text_encoder_checkpoint": str(root / "sat.pth"),
            "text_encoder_model": str(root / "BioLORD-2023-C"), "master_port": 29631}


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    from reg2rg.ingest import ingest

    d = tmp_path_factory.mktemp("vol")
    ingest(CT, d / "scan-ct64.nii.gz")
    return d / "scan-ct64.nii.gz"


def test_run_sat_case_imports_onto_the_ingested_grid(volume, tmp_path):
    from reg2rg.masks import read_region_masks, sidecar_path

    settings = {**_fake_sat(tmp_path), "prompts": PROMPTS}
    out = tmp_path / "masks" / "scan-ct64.nii.gz"
    side = run_sat_case(volume, out, tmp_path / "work", settings)
    assert json.loads(sidecar_path(out).read_text())["segmentation"]["backend"] == "sat"
    vol_img = sitk.ReadImage(str(volume))
    vol = sitk.GetArrayFromImage(vol_img)
    masks, side = read_region_masks(out)
    assert masks.shape[1:] == vol.shape
    mask_img = sitk.ReadImage(str(out))
    assert mask_img.GetSize() == vol_img.GetSize()
    assert np.allclose(mask_img.GetOrigin(), vol_img.GetOrigin())
    assert np.allclose(mask_img.GetSpacing(), vol_img.GetSpacing())
    # the stand-in thresholds HU inside SAT's crop (voxels > 0): the same voxels here, one for one
    fg = np.argwhere(vol > 0)
    inside = np.zeros(vol.shape, bool)
    inside[tuple(slice(a, b + 1) for a, b in zip(fg.min(0), fg.max(0)))] = True
    heart = masks[REGIONS.index("heart")]
    assert heart.any()
    assert np.array_equal(heart, (vol > 20) & (vol < 80) & inside)
    assert np.array_equal(masks[REGIONS.index("bone")], (vol > 200) & inside)
    assert side["status"]["heart"] == "present"
    assert side["segmentation"]["regions"]["bone"]["found"] == ["sternum", "rib 1"]
    lung = side["segmentation"]["regions"]["lung"]  # default prompts, which the stand-in leaves empty
    assert len(lung["found"]) == 5 and not any(lung["voxels"].values()) and side["status"]["lung"] == "empty"
    # SAT has no pleura class: it is not prompted but derived from the (here empty) lung
    asked = json.loads((tmp_path / "work" / "sat_input.jsonl").read_text())["label"]
    assert "pleura" not in asked and "heart" in asked
    assert side["segmentation"]["regions"]["pleura"]["derived"]["voxels"] == 0 and side["status"]["pleura"] == "empty"
    assert (tmp_path / "work" / "sat_run.log").is_file()


def test_command_is_the_sat_run_rules(tmp_path):
    s = {**SAT_DEFAULTS, "repo": "/sat", "checkpoint": "/c.pth", "text_encoder_checkpoint": "/t.pth"}
    cmd = sat_command(s, tmp_path / "in.jsonl", tmp_path / "out", "/env/bin/torchrun")
    assert cmd[:5] == ["/env/bin/torchrun", "--nproc_per_node=1", "--master_port", "29517", "/sat/inference.py"]
    args = dict(zip(cmd[5::2], cmd[6::2]))
    assert args == {"--rcd_dir": str(tmp_path / "out"), "--datasets_jsonl": str(tmp_path / "in.jsonl"),
                    "--vision_backbone": "UNET-L", "--checkpoint": "/c.pth", "--text_encoder": "ours",
                    "--text_encoder_checkpoint": "/t.pth", "--max_queries": "256", "--batchsize_3d": "1"}


def test_missing_settings_name_the_config_keys(volume, tmp_path):
    with pytest.raises(ConfigError, match=r"segmentation\.sat\.repo.*segmentation\.sat\.checkpoint.*"
                                          r"segmentation\.sat\.text_encoder_checkpoint.*"
                                          r"segmentation\.sat\.text_encoder_model \(a local folder of "
                                          r"FremyCompany/BioLORD-2023-C.*offline compute node"):
        run_sat_case(volume, tmp_path / "m.nii.gz", tmp_path / "w", {})
    s = _fake_sat(tmp_path)
    with pytest.raises(ConfigError, match=r"segmentation\.sat\.checkpoint: .*does not exist"):
        run_sat_case(volume, tmp_path / "m.nii.gz", tmp_path / "w", {**s, "checkpoint": str(tmp_path / "no.pth")})
    with pytest.raises(ConfigError, match=r"segmentation\.sat\.text_encoder_model: .*no config\.json"):
        run_sat_case(volume, tmp_path / "m.nii.gz", tmp_path / "w", {**s, "text_encoder_model": str(tmp_path)})
    assert not (tmp_path / "m.nii.gz").exists()


def test_failing_sat_shows_its_log(volume, tmp_path):
    s = _fake_sat(tmp_path, "import sys\nprint('CUDA out of memory, tried to allocate 34 GiB')\nsys.exit(3)\n")
    with pytest.raises(InputError, match=r"(?s)exit status \d+.*CUDA out of memory"):
        run_sat_case(volume, tmp_path / "m.nii.gz", tmp_path / "w", s)


@pytest.mark.slow
def test_report_command_with_sat(tmp_path):
    """`reg2rg report --segmenter sat --sat-config FILE` end to end with a tiny untrained model."""
    import torch

    from test_scan_report import REPORTS
    from reg2rg.cli import main
    from reg2rg.model import build_model, load_preset, save_trained, train_tiny_tokenizer

    torch.manual_seed(0)
    tok = train_tiny_tokenizer(REPORTS * 5, 320, tmp_path / "tok")
    model_dir = save_trained(build_model(load_preset("tiny"), tok, load_pretrained_vision=False), tmp_path / "model")
    cfg = tmp_path / "sat.yaml"
    cfg.write_text(yaml.safe_dump({**_fake_sat(tmp_path), "prompts": PROMPTS}))
    out = tmp_path / "report.json"
    rc = main(["report", "--model", str(model_dir), "--ct", str(CT), "--segmenter", "sat", "--sat-config", str(cfg),
               "--out", str(out), "--max-new-tokens", "8"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["masks"]["heart"] == "present" and report["masks"]["bone"] == "present"
    assert {r["mask_area"] for r in report["regions"]} >= {"heart", "bone"}
