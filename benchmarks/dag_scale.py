"""How long `snakemake -n` takes to plan a paper-scale data set, and which jobs it plans (docs/cluster.md).

A copy of the workflow gets a RadGenome-layout data set of N synthetic scans (default 25,000, 80 % train): only
its inventory is written (no volumes), so the dry run plans what a first real run submits. Two dry runs, each
timed as a whole `snakemake -n` command and once against the same workflow with one job per stage (sharding
null, the baseline measured in the same run):

  first   the inventory exists: ingest, masks and their gathers per shard, reports, the manifest checkpoint
  resumed every per-scan stage up to the manifests is done (stand-in tables at their paths, in DAG order): the
          manifests' checkpoint has run, so the cache's shards, training, generation and evaluation appear

    python benchmarks/dag_scale.py [--scans 25000] [--per-job 500] [--out benchmarks/dag_scale.json]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DATASET = "big"
TARGET = f"results/{DATASET}/metrics.json"


def workflow(dest: Path, scans: int, per_job: int | None) -> Path:
    dest.mkdir(parents=True)
    for name in ("Snakefile", "workflow", "config", "envs", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    (dest / "download").mkdir()
    cfg = {"datasets": {DATASET: {"layout": "radgenome", "root": str(dest / "download"), "spacing": [1.0, 1.0, 3.0],
                                  "model_preset": "paper"}},
           "sharding": {"scans_per_job": per_job}}
    (dest / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = dest / "results" / DATASET
    res.mkdir(parents=True)
    ids = [f"{'train' if i % 5 else 'valid'}_{i}_a_1" for i in range(scans)]
    inv = pd.DataFrame({
        "case_id": ids, "split": ["train" if c.startswith("train") else "test" for c in ids],
        "source_split": [c.split("_")[0] for c in ids],
        "image": [f"{c}.nii.gz" for c in ids], "mask_dir": [f"seg_{c}" for c in ids],  # relative to the root
        "report_csv": None, "labels_csv": None, "intensity_mode": "hu"})
    inv.to_parquet(res / "inventory.parquet", index=False)
    return dest


def dry_run(wd: Path) -> tuple[float, dict[str, int]]:
    t0 = time.perf_counter()
    proc = subprocess.run([str(SNAKEMAKE), "-n", TARGET, "--configfile", "run.yaml"], cwd=wd,
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed in {wd}:\n{proc.stderr[-4000:]}")
    counts = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.fullmatch(r"\s*([a-z_]+)\s+(\d+)\s*", line)
        if m and m.group(1) not in ("job", "count"):
            counts[m.group(1)] = int(m.group(2))
    return seconds, counts


def pretend_done_to_manifests(wd: Path) -> None:
    """Stand-in tables where the per-scan stages, reports and manifests write theirs, oldest first."""
    res = wd / "results" / DATASET
    inv = pd.read_parquet(res / "inventory.parquet")
    sys.path.insert(0, str(REPO))
    from reg2rg.shards import plan_shards

    per_job = yaml.safe_load((wd / "run.yaml").read_text())["sharding"]["scans_per_job"]
    plan = plan_shards(inv.case_id, per_job)
    status = lambda ids: pd.DataFrame({"case_id": ids, "status": "ok", "reason": ""})  # noqa: E731
    for stage in ("volumes", "masks"):
        (res / stage / "shards").mkdir(parents=True)
        for name, ids in plan.items():
            status(ids).to_parquet(res / stage / "shards" / f"{name}.parquet")
        status(list(inv.case_id)).to_parquet(res / stage / "status.parquet")
        time.sleep(0.01)
    (res / "reports").mkdir()
    for name in ("region_reports", "labels"):
        status(list(inv.case_id)).to_parquet(res / "reports" / f"{name}.parquet")
    time.sleep(0.01)
    (res / "manifest").mkdir()
    for split in ("train", "test"):
        part = inv[inv.split == split]
        pd.DataFrame({"case_id": part.case_id, "split": split, "status": "included",
                      "volume": [str(res / "volumes" / f"{c}.nii.gz") for c in part.case_id],
                      "mask": [str(res / "masks" / f"{c}.nii.gz") for c in part.case_id]}).to_parquet(
            res / "manifest" / f"{split}.parquet")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=25_000)
    ap.add_argument("--per-job", type=int, default=500)
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    report = {"scans": args.scans, "scans_per_job": args.per_job, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, per_job in (("sharded", args.per_job), ("one_job_per_stage", None)):
            wd = workflow(Path(tmp) / label, args.scans, per_job)
            first_s, first = dry_run(wd)
            pretend_done_to_manifests(wd)
            resumed_s, resumed = dry_run(wd)
            report["runs"][label] = {"first": {"seconds": round(first_s, 1), "jobs": first},
                                     "resumed": {"seconds": round(resumed_s, 1), "jobs": resumed}}
    s, b = report["runs"]["sharded"], report["runs"]["one_job_per_stage"]
    report["ratio_first"] = round(s["first"]["seconds"] / b["first"]["seconds"], 2)
    report["ratio_resumed"] = round(s["resumed"]["seconds"] / b["resumed"]["seconds"], 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
