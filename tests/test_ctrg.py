"""The CTRG reader (reg2rg.layouts.ctrg): annotation JSON + DICOM or NIfTI volumes, the seeded random 8:2 split, the
windowed (8-bit) intensity detection, slices-first NIfTI refused and conformed; the demo's stand-in for a SAT
run imported exactly; and (slow) the demo_ctrg manifest built end to end by the workflow."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from reg2rg import demo
from reg2rg.constants import REGIONS
from reg2rg.layouts import ctrg, inventory
from reg2rg.errors import ConfigError, InputError
from standins import sat_standin_checkout, vllm_standin_bin
from workflow_runs import workflow_copy

REPO = Path(__file__).resolve().parents[1]
SMALL = (96, 80, 24)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_ctrg")
    summary = demo.make_demo_dataset("ctrg", out, cases=5, seed=2, shape=SMALL)
    return out, summary


def _nifti(path: Path, arr_xyz: np.ndarray, zooms=(0.7, 0.7, 5.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr_xyz, np.diag([*zooms, 1.0])), str(path))


def _windowed_volume(shape=(64, 64, 20), seed=0) -> np.ndarray:
    """An 8-bit windowed stack: air 0, body about 230, lungs about 40 (slices last, nibabel order)."""
    rng = np.random.default_rng(seed)
    x, y, _ = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    arr = np.zeros(shape, np.uint8)
    body = ((x - 32) / 26.0) ** 2 + ((y - 32) / 20.0) ** 2 <= 1
    arr[body] = 230
    arr[body & (np.abs(x - 32) > 6) & (np.abs(x - 32) < 20) & (np.abs(y - 30) < 12)] = 40
    return np.clip(arr.astype(int) + rng.integers(-3, 4, shape) * (arr > 0), 0, 255).astype(np.uint8)


def _ctrg_root(root: Path, volumes: dict[str, np.ndarray], **kw) -> Path:
    ann = {"train": [], "test": []}
    for i, (cid, arr) in enumerate(volumes.items()):
        _nifti(root / "images" / f"{cid}.nii.gz", arr, **kw)
        ann["train" if i % 4 else "test"].append({"id": cid, "report": f"Report {cid}. Heart normal.",
                                                  "image_path": f"images/{cid}.nii.gz"})
    (root / "annotation.json").write_text(json.dumps(ann))
    return root


def test_demo_ctrg_inventory_split_reports_labels(demo_root):
    root, summary = demo_root
    inv = inventory("ctrg", root)
    ids = sorted(summary["labels"])
    assert sorted(inv.case_id) == ids and set(inv.intensity_mode) == {"hu"}
    assert (inv.split == "test").sum() == round(0.2 * len(ids))
    assert dict(zip(inv.case_id, inv.split)) == ctrg.random_split(ids, seed=0)  # seeded, reproducible
    assert ctrg.random_split(ids, seed=1) != ctrg.random_split(ids, seed=0) or len(ids) < 3
    assert all(not Path(p).is_absolute() and (root / p).is_dir() for p in inv.image) and inv.mask_dir.isna().all()
    reports = ctrg.ctrg_reports(inv, root)
    ann = ctrg.read_annotation(root / "annotation.json")
    assert dict(zip(reports.case_id, reports.report)) == dict(zip(ann.case_id, ann.report))
    labels = ctrg.ctrg_labels(inv, root).set_index("case_id")
    for cid in ids:
        assert labels.loc[cid, "labels"] == [summary["labels"][cid][k] for k in summary["labels"][cid]]


def _check_relative(inv, root: Path):
    """Every path of the inventory is relative, names nothing above the root, and resolves to its file."""
    from reg2rg.layouts.common import PATH_COLUMNS

    seen = 0
    for col in PATH_COLUMNS:
        for p in inv[col].dropna():
            assert not Path(p).is_absolute() and ".." not in Path(p).parts, (col, p)
            assert str(root) not in p and root.parent.name not in p, (col, p)
            assert (root / p).exists(), (col, p)
            seen += 1
    assert seen >= len(inv) * 2


def test_inventory_paths_are_relative_and_resolve_to_the_files(demo_root, tmp_path):
    """The inventory names files relative to the data set root (a folder above it named after the patient
    reaches no table); the readers resolve them with the root they are given."""
    from reg2rg.layouts.radgenome import radgenome_labels
    from reg2rg.region_reports import inventory_reports

    root = tmp_path / "DOE^JOHN_12345" / "radgenome"
    summary = demo.make_demo_dataset("radgenome", root, cases=3, seed=1, shape=(48, 40, 12))
    inv = inventory("radgenome", root)
    assert sorted(inv.case_id) == sorted(summary["splits"]["train"] + summary["splits"]["valid"])
    _check_relative(inv, root)
    assert inv.image.str.startswith(("train_preprocessed/", "valid_preprocessed/")).all()
    assert set(inventory_reports(inv, root).case_id) >= set(inv.case_id)
    assert set(radgenome_labels(inv, root).case_id) == set(inv.case_id)
    with pytest.raises(FileNotFoundError):  # the paths mean nothing without their root
        radgenome_labels(inv, tmp_path)

    croot, _ = demo_root
    cinv = inventory("ctrg", croot)
    _check_relative(cinv, croot)
    assert set(cinv.report_csv) == {"annotation.json"} and set(cinv.labels_csv) == {"labels.csv"}
    # An absolute image_path under the root is stored relative to it; one outside the root is refused.
    moved = shutil.copytree(croot, tmp_path / "ctrg", ignore=shutil.ignore_patterns("sat_standin"))
    ann = json.loads((moved / "annotation.json").read_text())
    first = ann["train"][0]
    first["image_path"] = str(moved / first["image_path"])
    (moved / "annotation.json").write_text(json.dumps(ann))
    again = inventory("ctrg", moved).set_index("case_id")
    assert not Path(again.loc[first["id"], "image"]).is_absolute()
    first["image_path"] = str(croot / "images" / first["id"])
    (moved / "annotation.json").write_text(json.dumps(ann))
    with pytest.raises(InputError, match=f"image of '{first['id']}'.*outside the data set root"):
        inventory("ctrg", moved)


def test_split_setting_sets_seed_and_fraction(demo_root):
    root, summary = demo_root
    ids = sorted(summary["labels"])
    inv = inventory("ctrg", root, split={"seed": 3, "test_fraction": 0.4})
    assert dict(zip(inv.case_id, inv.split)) == ctrg.random_split(ids, seed=3, test_fraction=0.4)
    assert (inv.split == "test").sum() == round(0.4 * len(ids))
    for bad, message in (({"fraction": 0.3}, "unknown key"), ({"test_fraction": 1.0}, "between 0 and 1")):
        with pytest.raises(ConfigError, match=message):
            inventory("ctrg", root, split=bad)
    with pytest.raises(ConfigError, match="keeps its source splits"):
        inventory("radgenome", root, split={"seed": 1})


def test_ctrg_split_is_eight_to_two():
    split = ctrg.random_split([f"c{i}" for i in range(1804)], seed=0)
    assert sum(v == "test" for v in split.values()) == round(0.2 * 1804)


def test_windowed_volumes_are_detected_and_recorded(tmp_path):
    root = _ctrg_root(tmp_path / "w", {f"w{i}": _windowed_volume(seed=i) for i in range(6)})
    inv = inventory("ctrg", root)
    assert set(inv.intensity_mode) == {"windowed"} and len(inv) == 6
    hu = _windowed_volume().astype(np.int16) * 4 - 1024  # a CT in HU: air -1024
    assert ctrg.classify_values(hu) == "hu"
    assert ctrg.classify_values(_windowed_volume()) == "windowed"
    assert ctrg.classify_values(np.array([0, 300, 4000])) == "unknown"  # raw stored values: neither
    mixed = _ctrg_root(tmp_path / "m", {"a": _windowed_volume(), "b": hu})
    with pytest.raises(InputError, match="disagree"):
        inventory("ctrg", mixed)
    raw = _ctrg_root(tmp_path / "r", {"a": (_windowed_volume().astype(np.int16) * 10)})
    with pytest.raises(InputError, match="neither CT in HU"):
        inventory("ctrg", raw)
    model = ctrg.windowed_to_model_range(np.array([0, 255, 127.5]))
    assert model.tolist() == [-1.0, 1.0, 0.0]
    assert ctrg.windowed_to_model_range(np.array([10, 20]), per_volume=True).tolist() == [-1.0, 1.0]


def test_slices_first_nifti_is_refused_then_conformed(tmp_path):
    vol = _windowed_volume(shape=(64, 64, 12))
    first = np.ascontiguousarray(vol.transpose(2, 1, 0))  # the public copy: [slice, row, column]
    root = _ctrg_root(tmp_path / "sf", {"a": first, "b": first.copy()})
    with pytest.raises(InputError, match="slices first.*python -m reg2rg.layouts conform"):
        inventory("ctrg", root)
    assert ctrg.main(["conform", str(root), str(tmp_path / "ok"), "--spacing", "0.8", "0.8", "5"]) == 0
    inv = inventory("ctrg", tmp_path / "ok")
    img = sitk.ReadImage(str(tmp_path / "ok" / inv.image[0]))
    assert img.GetSize() == (64, 64, 12) and img.GetSpacing() == pytest.approx((0.8, 0.8, 5.0))
    assert np.array_equal(sitk.GetArrayFromImage(img), first)
    assert set(inv.intensity_mode) == {"windowed"}


def test_bad_annotation_names_the_file(tmp_path):
    (tmp_path / "annotation.json").write_text("{not json")
    with pytest.raises(InputError, match="annotation.json: not valid JSON"):
        inventory("ctrg", tmp_path)
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [{"id": "a"}, {"id": "a"}]}))
    with pytest.raises(InputError, match="id not unique"):
        inventory("ctrg", tmp_path)


def test_demo_standin_for_a_sat_run_imports_to_the_true_masks(demo_root, tmp_path):
    """The demo's SAT-format stand-in, prepared and imported the way the workflow does, gives the masks that
    placing the phantom's true masks directly on the ingested grid gives: voxel for voxel. The pleura is not
    asked of SAT (it has no such class): it is derived from the lung at import, so its expected mask is the
    derivation (reg2rg.segment.derived.pleural_space) on the true masks, not the phantom's painted pleura,
    which must lie inside it."""
    from reg2rg.ingest import ingest
    from reg2rg.masks import import_region_masks, read_region_masks
    from reg2rg.segment.derived import PLEURA_MARGIN_MM, body_mask, pleural_space
    from reg2rg.segment.sat import import_sat_case, prepare_sat_input, region_prompts, restore_sat_mask

    root, summary = demo_root
    cid = sorted(summary["labels"])[0]
    plan = next(p for p in demo.plan_dataset("ctrg", 5, 2, 0.25, SMALL) if p.case_id == cid)
    case = demo.render_case(plan, 2)
    vol = tmp_path / f"{cid}.nii.gz"
    ingest(root / "images" / cid, vol)
    prepare_sat_input(vol, tmp_path / "in" / f"{cid}.nii.gz", tmp_path / "in" / f"{cid}.json", cid)
    import_sat_case(vol, root / "sat_standin" / "reg2rg", tmp_path / "in" / f"{cid}.json", region_prompts(None),
                    tmp_path / "sat.nii.gz", tmp_path / "work")
    truth = {}
    for r in REGIONS:
        truth[r] = tmp_path / "truth" / f"{r}.nii.gz"
        demo.write_nifti(case.masks[r].astype(np.uint8), case.geometry, truth[r])
    import_region_masks(vol, truth, tmp_path / "truth.nii.gz")
    got, side = read_region_masks(tmp_path / "sat.nii.gz")
    want, _ = read_region_masks(tmp_path / "truth.nii.gz")
    # SAT only segments inside its crop (voxels > 0 HU): the truth there, nothing outside
    rec = json.loads((tmp_path / "in" / f"{cid}.json").read_text())
    box = [e - s for s, e in zip(rec["crop"]["start"], rec["crop"]["end"])]
    inside = sitk.GetArrayFromImage(restore_sat_mask(np.ones(box, np.uint8), rec)) > 0
    assert inside.shape == want.shape[1:] and not inside.all()
    p, lung = REGIONS.index("pleura"), REGIONS.index("lung")
    painted = want[p].copy()
    want = want & inside
    others = np.logical_or.reduce([want[i] for i in range(len(REGIONS)) if i not in (p, lung)])
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(vol)))
    want[p] = pleural_space(want[lung], (3.0, 1.0, 1.0), PLEURA_MARGIN_MM, body=body_mask(hu), exclude=others)
    assert np.array_equal(got, want)
    assert (want & inside).sum() > 0.97 * (want.sum() - want[p].sum() + painted.sum())
    assert (want[p] & painted).sum() > 0.9 * painted.sum()  # the phantom's pleura is in the derived one
    assert side["segmentation"]["regions"]["pleura"]["derived"]["from"] == "lung"
    assert sum(s == "present" for s in side["status"].values()) >= 8
    assert (root / "sat_standin" / "README.txt").read_text().startswith("A STAND-IN FOR A SAT RUN")


def _run_snakemake(wd: Path, *args: str, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    import os

    bin_dir = Path(sys.executable).parent  # as in an activated environment: python and torchrun from it
    path = os.pathsep.join([*([str(path_prefix)] if path_prefix else []), str(bin_dir), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path}
    proc = subprocess.run([str(bin_dir / "snakemake"), *args, "--cores", "2"], cwd=wd, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_train_ctrg_without_root_says_which_key_to_set(tmp_path):
    wd = workflow_copy(tmp_path / "wf")
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(snakemake), "-n", "train_ctrg"], cwd=wd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "set datasets.ctrg.root in config/config.yaml" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_demo_ctrg_end_to_end(tmp_path):
    """`snakemake train_demo_ctrg`: DICOM ingest -> SAT-format import -> split -> manifest -> cache -> train."""
    import yaml

    wd = workflow_copy(tmp_path / "wf")
    (wd / "small.yaml").write_text(yaml.safe_dump(
        {"datasets": {"demo_ctrg": {"generate": {"cases": 4, "seed": 3, "test_fraction": 0.25,
                                                 "shape": list(SMALL)},
                                    "training": {"max_steps": 2, "checkpoint_every": 2}}}}))
    _run_snakemake(wd, "train_demo_ctrg", "results/demo_ctrg/manifest/test.parquet", "--configfile", "small.yaml")
    res = wd / "results" / "demo_ctrg"
    run = json.loads((res / "model" / "run_config.json").read_text())
    assert run["training"]["max_steps"] == 2
    assert (res / "model" / "adapter" / "adapter_config.json").is_file()
    m = pd.concat([pd.read_parquet(res / "manifest" / f"{s}.parquet") for s in ("train", "test")])
    summary = json.loads((res / "raw" / demo.SUMMARY_FILE).read_text())
    assert sorted(m.case_id) == sorted(summary["labels"]) and (m.status == "included").all()
    assert (m.split == "test").sum() == 1 and set(m.intensity_mode) == {"hu"}
    for row in m.itertuples():
        assert sum(s == "present" for s in row.region_status) >= 8
        assert row.report and sum(t is not None for t in row.region_texts) >= 5
        assert len(row.labels) == 18
        side = json.loads((res / "masks" / f"{row.case_id}.json").read_text())
        assert side["segmentation"]["backend"] == "sat_standin"
    reports = pd.read_parquet(res / "reports" / "region_reports.parquet")
    assert set(reports.splitter) == {"rules-v1"} and (reports.split_status == "ok").all()


@pytest.mark.slow
def test_ctrg_with_sat_and_llm_endpoint(tmp_path):
    """The `ctrg` data set as a user runs it: SAT from a checkout (a stand-in program speaking SAT's file
    formats, started with torchrun), the LLM splitter against an OpenAI-compatible server (the local
    stand-in), manifests end to end; a rerun of the split makes no request."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from openai_standin import StandinServer

    import yaml

    wd = workflow_copy(tmp_path / "wf")
    root = tmp_path / "ctrg"
    summary = demo.make_demo_dataset("ctrg", root, cases=4, seed=6, shape=SMALL, sat_standin=False)
    sat_repo = sat_standin_checkout(tmp_path / "SAT")
    (tmp_path / "sat.pth").write_text("weights")
    with StandinServer() as server:
        cfg = {"datasets": {"ctrg": {
            "root": str(root),
            "segmentation": {"backend": "sat", "prompts": {"heart": ["heart"], "bone": ["sternum", "rib 1"],
                                                            "abdomen": ["liver"]},
                             "sat": {"repo": str(sat_repo), "checkpoint": str(tmp_path / "sat.pth"),
                                     "text_encoder_checkpoint": str(tmp_path / "sat.pth"),
                                     "text_encoder_model": str(tmp_path / "BioLORD-2023-C")}},
            "splitter": {"kind": "llm", "llm": {"base_url": server.base_url, "model": "qwen-standin",
                                                "max_attempts": 2, "concurrency": 2}}}}}
        (wd / "ctrg.yaml").write_text(yaml.safe_dump(cfg))
        targets = ["results/ctrg/manifest/train.parquet", "results/ctrg/manifest/test.parquet"]
        _run_snakemake(wd, *targets, "--configfile", "ctrg.yaml")
        assert server.requests == 4
        res = wd / "results" / "ctrg"
        m = pd.concat([pd.read_parquet(res / "manifest" / f"{s}.parquet") for s in ("train", "test")])
        assert sorted(m.case_id) == sorted(summary["labels"]) and (m.status == "included").all()
        # the masks are SAT's thresholds of the ingested volume, inside SAT's crop, voxel for voxel
        from reg2rg.masks import read_region_masks

        for cid in m.case_id:
            vol = sitk.GetArrayFromImage(sitk.ReadImage(str(res / "volumes" / f"{cid}.nii.gz")))
            masks, side = read_region_masks(res / "masks" / f"{cid}.nii.gz")
            fg = np.argwhere(vol > 0)
            inside = np.zeros(vol.shape, bool)
            inside[tuple(slice(a, b + 1) for a, b in zip(fg.min(0), fg.max(0)))] = True
            assert np.array_equal(masks[REGIONS.index("heart")], (vol > 20) & (vol < 80) & inside)
            assert np.array_equal(masks[REGIONS.index("bone")], (vol > 200) & inside)
            assert side["status"]["lung"] == "empty" or side["status"]["lung"] == "present"
            assert side["segmentation"]["regions"]["bone"]["found"] == ["sternum", "rib 1"]
        reports = pd.read_parquet(res / "reports" / "region_reports.parquet")
        assert (reports.split_status == "ok").all()
        assert set(reports.splitter) == {"llm:qwen-standin:ctrg-split-v1"}
        # a rerun of the split asks nothing: every answer is in the cache
        _run_snakemake(wd, "results/ctrg/reports/region_reports.parquet", "--forcerun", "split_reports",
                       "--configfile", "ctrg.yaml")
        assert server.requests == 4


@pytest.mark.slow
def test_split_reports_serves_the_llm_itself_and_stops_it(tmp_path):
    """splitter.llm.serve.enabled: the job starts `vllm serve` (here a stand-in program of that name on the
    PATH, speaking the OpenAI protocol), waits for /health, splits, and stops it."""
    import socket

    import yaml

    from reg2rg.split.serve import is_healthy

    wd = workflow_copy(tmp_path / "wf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake_bin = vllm_standin_bin(tmp_path / "bin")
    (wd / "serve.yaml").write_text(yaml.safe_dump({"datasets": {"demo_ctrg": {
        "generate": {"cases": 3, "seed": 4, "test_fraction": 0.34, "shape": list(SMALL)},
        "splitter": {"kind": "llm", "llm": {"max_attempts": 2, "serve": {
            "enabled": True, "model_path": "/models/Qwen2.5-14B-Instruct", "port": port,
            "startup_timeout_s": 60}}}}}}))
    proc = _run_snakemake(wd, "results/demo_ctrg/reports/region_reports.parquet", "--configfile", "serve.yaml",
                          path_prefix=fake_bin)
    assert "gpu=1" in proc.stdout + proc.stderr  # the job asks for a GPU
    reports = pd.read_parquet(wd / "results" / "demo_ctrg" / "reports" / "region_reports.parquet")
    assert (reports.split_status == "ok").all() and len(reports) == 3
    assert set(reports.splitter) == {"llm:Qwen2.5-14B-Instruct:ctrg-split-v1"}
    assert (wd / "results" / "demo_ctrg" / "logs" / "split_reports" / "00000.vllm_serve.log").is_file()
    assert not is_healthy(f"http://127.0.0.1:{port}/v1")  # stopped after the split


def test_intensity_sampling_logs_no_path_above_the_root(tmp_path, caplog):
    """An unreadable volume is left to ingest; the warning names it relative to the data set root (a folder
    above it may carry the patient's name)."""
    import logging

    from reg2rg.layouts.ctrg import detect_intensity_mode

    root = tmp_path / "Doe^John" / "ctrg"
    (root / "vol").mkdir(parents=True)
    bad = root / "vol" / "c1.nii.gz"
    bad.write_bytes(b"not a volume")
    with caplog.at_level(logging.WARNING, logger="reg2rg"):
        assert detect_intensity_mode([bad], root=root) == "hu"
    text = caplog.text
    assert "vol/c1.nii.gz: cannot sample intensities" in text
    assert "Doe^John" not in text and str(tmp_path) not in text
