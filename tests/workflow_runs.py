"""The repository's workflow run from the tests: a copy of it in a temporary folder with a run config, snakemake
in that copy, and what a run did (jobs per rule, file digests, the manifests)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def workflow_copy(dest: Path, config: dict | None = None) -> Path:
    """A copy of the repository's workflow (Snakefile, workflow, config, envs, profiles) in `dest`, with `config`
    as run.yaml when given."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "envs", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    if config is not None:
        (dest / "run.yaml").write_text(yaml.safe_dump(config))
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(SNAKEMAKE), *args, "--configfile", "run.yaml"], cwd=workdir, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def jobs_run(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> number of jobs that a snakemake run finished (from its log)."""
    counts: dict[str, int] = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        if "(Rule: " in line and "Finished job" in line:
            rule = line.split("(Rule: ")[1].rstrip(")")
            counts[rule] = counts.get(rule, 0) + 1
    return counts


def file_digests(root: Path, pattern: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob(pattern))}


def manifests(res: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(res / "manifest" / f"{s}.parquet") for s in ("train", "test")],
                     ignore_index=True)
