"""The workflow as a user runs it: `snakemake` in a copy of the repository's workflow, on demo data with
bad inputs mixed in, and the no-leak rule for DICOM patient identifiers."""
from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from reg2rg import demo
from workflow_runs import workflow_copy

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def _workflow_copy(tmp_path: Path, cases: int, seed: int) -> Path:
    workflow_copy(tmp_path)
    cfg = {"datasets": {"demo": {"generate": {"cases": cases, "seed": seed, "test_fraction": 0.25,
                                              "shape": [112, 96, 32]}}}}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def _snakemake(workdir: Path, *targets: str, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(SNAKEMAKE), *targets, "--cores", "2", "--configfile", "small.yaml"],
                          cwd=workdir, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.mark.slow
def test_demo_manifest_accounts_for_every_scan_with_bad_inputs(tmp_path):
    wd = _workflow_copy(tmp_path, cases=6, seed=5)
    _snakemake(wd, "results/demo/raw")
    raw = wd / "results/demo/raw"
    summary = pd.read_json(raw / "demo_summary.json", typ="series")
    train, valid = summary["splits"]["train"], summary["splits"]["valid"]
    truncated, unknown_region, no_masks, wrong_grid = train[0], train[1], train[2], valid[0]

    # A truncated volume.
    vol = next((raw / "train_preprocessed").rglob(f"{truncated}.nii.gz"))
    vol.write_bytes(vol.read_bytes()[: vol.stat().st_size // 2])
    # A report row naming a region that does not exist.
    csv = raw / "train_region_report.csv"
    csv.write_text(csv.read_text() + f"{unknown_region}.nii.gz,spleen,The spleen is normal.\n")
    # Every mask file of a scan missing.
    shutil.rmtree(raw / "train_region_mask" / f"seg_{no_masks}")
    # One mask on another grid, far outside the volume: recorded, the scan still goes on.
    import SimpleITK as sitk

    heart = raw / "valid_region_mask" / f"seg_{wrong_grid}" / "heart.nii.gz"
    img = sitk.ReadImage(str(heart))
    img.SetOrigin([o + 5000.0 for o in img.GetOrigin()])
    sitk.WriteImage(img, str(heart))

    _snakemake(wd, "results/demo/manifest/train.parquet", "results/demo/manifest/test.parquet")
    m = pd.concat([pd.read_parquet(wd / f"results/demo/manifest/{s}.parquet") for s in ("train", "test")])
    m = m.set_index("case_id")
    assert sorted(m.index) == sorted(train + valid)  # every input scan appears
    assert m.loc[truncated, "status"] == "excluded" and "truncated" in m.loc[truncated, "reason"]
    assert vol.name in m.loc[truncated, "reason"]  # the error names the file
    assert m.loc[unknown_region, "status"] == "excluded" and "unknown region 'spleen'" in m.loc[unknown_region, "reason"]
    assert m.loc[no_masks, "status"] == "excluded" and "mask" in m.loc[no_masks, "reason"]
    assert m.loc[wrong_grid, "status"] == "included"
    assert list(m.loc[wrong_grid, "region_status"])[4] == "outside"  # heart
    assert any("heart" in n for n in m.loc[wrong_grid, "notes"])
    others = m.drop(index=[truncated, unknown_region, no_masks])
    assert (others.status == "included").all()
    # The included scans carry geometry, region texts and labels.
    ok = m.loc[train[3]]
    assert list(ok["spacing"]) == [1.0, 1.0, 3.0] and ok["labels"] is not None and len(ok["labels"]) == 18
    assert sum(t is not None for t in ok["region_texts"]) >= 5


def test_ingest_config_keys_let_a_refused_scan_in_and_rerun_the_shards(tmp_path):
    """datasets.<name>.ingest.fill_nonfinite through the workflow: without it a scan with NaN voxels is refused
    with its reason; with it (a param of rule ingest_shard) the shards rerun and the scan is ingested, its
    sidecar recording the fill."""
    import numpy as np
    import SimpleITK as sitk

    wd = _workflow_copy(tmp_path, cases=4, seed=3)
    _snakemake(wd, "results/demo/raw")
    raw = wd / "results/demo/raw"
    case = pd.read_json(raw / "demo_summary.json", typ="series")["splits"]["train"][0]
    vol = next((raw / "train_preprocessed").rglob(f"{case}.nii.gz"))
    img = sitk.ReadImage(str(vol))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr[arr.shape[0] // 2, :4, :4] = np.nan
    nan = sitk.GetImageFromArray(arr)
    nan.CopyInformation(img)
    sitk.WriteImage(nan, str(vol))

    target = "results/demo/volumes/status.parquet"
    _snakemake(wd, target)
    status = pd.read_parquet(wd / target).set_index("case_id")
    assert status.loc[case, "status"] == "error" and "16 of" in status.loc[case, "reason"]
    assert "datasets.<name>.ingest.fill_nonfinite" in status.loc[case, "reason"]
    assert (status.drop(index=case).status == "ok").all()

    cfg = yaml.safe_load((wd / "small.yaml").read_text())
    cfg["datasets"]["demo"]["ingest"] = {"fill_nonfinite": -1024}
    (wd / "small.yaml").write_text(yaml.safe_dump(cfg))
    _snakemake(wd, target)
    assert (pd.read_parquet(wd / target).status == "ok").all()
    side = (wd / "results/demo/volumes" / f"{case}.json").read_text()
    assert '"step": "fill_nonfinite"' in side and '"voxels": 16' in side


def test_radgenome_without_root_says_which_key_to_set(tmp_path):
    wd = _workflow_copy(tmp_path, cases=4, seed=0)
    proc = _snakemake(wd, "-n", "results/radgenome/manifest/train.parquet", check=False)
    assert proc.returncode != 0
    assert "set datasets.radgenome.root in config/config.yaml" in proc.stdout + proc.stderr


def _shipped_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_config_has_no_unknown_key():
    from reg2rg.workflow_config import config_problems, load_schema

    assert config_problems(_shipped_config(), load_schema(REPO / "workflow/schemas/config.schema.yaml")) == []


def test_config_check_imports_neither_torch_nor_transformers():
    """The Snakefile checks the config at every parse, and a SLURM job parses it twice (the plugin's job step runs
    snakemake again): the check, which reads Reg2RGConfig's keys, must not pull in torch and transformers (about
    2 s of each parse on the 2-core machine)."""
    code = ("import sys; from reg2rg.workflow_config import check_config, read_workflow_config; "
            f"check_config(read_workflow_config({str(REPO / 'config/config.yaml')!r}), "
            f"{str(REPO / 'workflow/schemas/config.schema.yaml')!r}); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    from reg2rg import model
    from reg2rg.model import config as model_config

    assert model.load_preset is model_config.load_preset and "build_model" in dir(model)
    with pytest.raises(AttributeError, match="no attribute 'build_modle'"):
        model.build_modle


def test_every_unknown_key_is_named_with_where_it_is():
    from reg2rg.workflow_config import config_problems, load_schema

    cfg = _shipped_config()
    cfg["datasets"]["demo"]["spcing"] = [1.0, 1.0, 3.0]  # a typo beside the real key
    cfg["datasets"]["demo"]["generate"]["case"] = 4
    cfg["datasets"]["ctrg"]["splitter"]["llm"]["serve"]["resources"]["gpus"] = 2
    cfg["datasets"]["ctrg"]["segmentation"]["prompts"] = {"hart": ["heart"]}
    cfg["datasets"]["demo_ctrg"]["training"] = {"epoch": 2}
    cfg["threads"]["cahce"] = 2
    cfg["training"]["tiny"]["resources"]["gpus"] = 1
    cfg["training"]["tinyy"] = {"epochs": 1}
    cfg["presets"]["tiny"]["vit"]["dpth"] = 2
    cfg["ablations"]["settings"]["a"]["model"]["use_textures"] = True
    cfg["ablations"]["paper"] = {"demo": {"d": {"bleu1": 0.1}}}
    cfg["evalution"] = {"protocol": "coco"}
    problems = config_problems(cfg, load_schema(REPO / "workflow/schemas/config.schema.yaml"))
    unknown = sorted(p.split("'")[1] for p in problems if p.startswith("config: unknown key"))
    assert unknown == sorted([
        "datasets.demo.spcing", "datasets.demo.generate.case", "datasets.ctrg.splitter.llm.serve.resources.gpus",
        "datasets.ctrg.segmentation.prompts.hart", "datasets.demo_ctrg.training.epoch", "threads.cahce",
        "training.tiny.resources.gpus", "training.tinyy", "presets.tiny.vit.dpth",
        "ablations.settings.a.model.use_textures", "ablations.paper.demo.d.bleu1", "evalution"]), problems
    assert len(problems) == len(unknown), problems
    spacing = next(p for p in problems if "'datasets.demo.spcing'" in p)
    assert "spacing" in spacing.split("known:")[1]  # the keys it could have meant


def test_ctrate_metadata_on_a_ctrg_data_set_is_refused_not_ignored():
    from reg2rg.workflow_config import config_problems, load_schema

    cfg = _shipped_config()
    cfg["datasets"]["ctrg"]["ctrate_metadata"] = {"train": "/data/train_metadata.csv", "valid": None}
    cfg["datasets"]["radgenome"]["ctrate_metadata"]["valid"] = "/data/validation_metadata.csv"  # its own: fine
    problems = config_problems(cfg, load_schema(REPO / "workflow/schemas/config.schema.yaml"))
    assert problems == ["config: datasets.ctrg.ctrate_metadata is set (train) but only the radgenome layout reads "
                        "CT-RATE metadata (layout 'ctrg')"]


def test_bad_config_stops_the_workflow_naming_every_key(tmp_path):
    """An unknown key and an unknown default_dataset stop `snakemake` at the start with one line each, not a
    MissingInputException later."""
    wd = _workflow_copy(tmp_path, cases=4, seed=0)
    (wd / "small.yaml").write_text(yaml.safe_dump({"default_dataset": "dmeo",
                                                   "datasets": {"demo": {"spcing": [1.0, 1.0, 2.0]}}}))
    proc = _snakemake(wd, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config: unknown key 'datasets.demo.spcing'" in out, out[-3000:]
    assert "config: default_dataset 'dmeo' is no data set (known: ctrg, demo, demo_ctrg, radgenome)" in out
    assert "MissingInput" not in out and "Traceback" not in out


def test_lint_is_clean():
    proc = subprocess.run([str(SNAKEMAKE), "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr, proc.stdout


def _all_bytes(root: Path) -> bytes:
    """Every file under root, with .gz files also decompressed."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out.append(data)
            if p.name.endswith(".gz"):
                out.append(gzip.decompress(data))
    return b"\n".join(out)


def test_demo_dicom_patient_identifiers_reach_no_output(tmp_path):
    src, out = tmp_path / "ctrg", tmp_path / "out"
    summary = demo.make_demo_dataset("ctrg", src, cases=2, seed=7, shape=[96, 80, 24])
    secrets = [str(v) for v in summary["patient_names"] + summary["patient_ids"] + summary["accession_numbers"]]
    secrets += [s.replace("^", " ") for s in secrets if "^" in s]
    assert secrets and all(len(s) >= 4 for s in secrets)
    first = sorted((src / "images").iterdir())[0]
    assert any(s.encode() in (first / "IM0001.dcm").read_bytes() for s in secrets)  # they are in the input
    logs = []
    for series in sorted((src / "images").iterdir()):
        proc = subprocess.run([sys.executable, "-m", "reg2rg", "-v", "ingest", str(series),
                               str(out / f"{series.name}.nii.gz")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        logs.append(proc.stdout + proc.stderr)
    blob = _all_bytes(out) + "\n".join(logs).encode()
    assert len(list(out.glob("*.nii.gz"))) == 2
    for s in secrets:
        assert s.encode() not in blob, f"patient identifier {s!r} leaked into an output or log"

    # The workflow on the same scans, the data set root given by an absolute path below a folder named after
    # the patient: no table (nor sidecar or log) names the root, the folder or an identifier (the inventory's
    # paths are relative to the root, and each stage resolves them with the root from the config).
    folder = summary["patient_ids"][0]
    root = tmp_path / "site" / folder / "ctrg"
    root.parent.mkdir(parents=True)
    shutil.move(src, root)
    (tmp_path / "wf").mkdir()
    wd = _workflow_copy(tmp_path / "wf", cases=4, seed=0)
    cfg = yaml.safe_load((wd / "small.yaml").read_text())
    cfg["datasets"]["patients"] = {"layout": "ctrg", "root": str(root), "spacing": [1.0, 1.0, 3.0],
                                   "split": {"seed": 0, "test_fraction": 0.5}, "model_preset": "tiny",
                                   "splitter": {"kind": "rules"}}
    (wd / "small.yaml").write_text(yaml.safe_dump(cfg))
    _snakemake(wd, "results/patients/manifest/train.parquet", "results/patients/manifest/test.parquet")
    results = wd / "results" / "patients"
    tables = sorted(results.rglob("*.parquet"))
    names = {p.relative_to(results).as_posix() for p in tables}
    assert {"inventory.parquet", "volumes/status.parquet", "masks/status.parquet", "reports/region_reports.parquet",
            "reports/labels.parquet", "manifest/train.parquet", "manifest/test.parquet"} <= names, names
    inv = pd.read_parquet(results / "inventory.parquet")
    assert all((root / p).is_dir() for p in inv.image)
    assert (pd.read_parquet(results / "volumes/status.parquet").status == "ok").all()
    forbidden = [str(tmp_path), folder, *secrets]
    for table in tables:
        df = pd.read_parquet(table)
        for col in df.columns:
            for value in df[col].dropna():
                text = str(list(value)) if hasattr(value, "__len__") and not isinstance(value, str) else str(value)
                for s in forbidden:
                    assert s not in text, f"{s!r} in column {col} of {table.relative_to(results)}"
    everything = _all_bytes(results)  # the sidecars, the volumes and the stages' logs too
    for s in forbidden:
        assert s.encode() not in everything, f"{s!r} in a file under results/patients"
