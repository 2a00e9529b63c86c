"""How long the demo takes (`make demo` with the environment installed: `snakemake --cores 2`), stage by stage,
against the previous demo recipe's training measured in the same run (issue 15: at most 8 minutes on the
project's 2-core machine).

The demo runs in a fresh copy of the repository's workflow; each job's wall time comes from Snakemake's own
log (the time of its start and of its "Finished jobid" line). The baseline is the training the demo had before
issue 15 (the tiny preset without region prefix features, 3000 steps of 3 scans on one thread): its step time is
measured here on the demo's own data and tokenizer, after the run, as the time difference of two runs that
differ by `--baseline-steps` steps (so that start-up and model building cancel), and its whole time
extrapolated to 3000 steps, so the ratio says what the new recipe saves on this machine, in this run's load.

    python benchmarks/demo_time.py [--out benchmarks/demo_time.json] [--keep DIR] [--baseline-steps 100]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
GOAL_S = 8 * 60
PREVIOUS_RECIPE = {"max_steps": 3000, "per_device_batch_size": 3, "effective_batch_size": 3,
                   "learning_rate": 1.0e-3}
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_DONE = re.compile(r"^Finished jobid: (\d+) ")


def job_times(log_text: str) -> dict[str, float]:
    """Seconds per rule (summed over its jobs) from a Snakemake log: a job runs from the time stamp above its
    `rule X:` block to the time stamp above its `Finished jobid: N` line."""
    stamp, pending, started, per_rule = None, None, {}, defaultdict(float)
    for line in log_text.splitlines():
        if m := _STAMP.match(line.strip()):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := _START.match(line.strip()):
            pending = m.group(1)
        elif (m := _JOBID.match(line)) and pending:
            started[m.group(1)] = (pending, stamp)
            pending = None
        elif (m := _DONE.match(line.strip())) and m.group(1) in started:
            rule, t0 = started.pop(m.group(1))
            per_rule[rule] += (stamp - t0).total_seconds()
    return dict(per_rule)


def run_demo(folder: Path) -> tuple[float, dict[str, float]]:
    for name in ("Snakefile", "workflow", "config", "envs", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)
    t0 = time.perf_counter()
    proc = subprocess.run([str(SNAKEMAKE), "--cores", "2"], cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"the demo failed:\n{proc.stderr[-4000:]}")
    log = sorted((folder / ".snakemake" / "log").glob("*.snakemake.log"))[-1]
    return wall, job_times(log.read_text())


def _time_previous_recipe(folder: Path, steps: int) -> float:
    """Wall seconds of `steps` steps of the previous recipe's training on the demo's data (one thread, as the
    demo trains), start-up included."""
    cfg = yaml.safe_load((folder / "config" / "config.yaml").read_text())
    training = {**cfg["training"]["tiny"], **PREVIOUS_RECIPE, "max_steps": steps}
    training.pop("resources", None)
    preset = {**cfg["presets"]["tiny"], "region_prefix_features": False}
    res, work = folder / "results" / "demo", folder / f"baseline_{steps}"
    cmd = [sys.executable, "-m", "reg2rg.train", "--manifest", str(res / "manifest" / "train.parquet"),
           "--cache", str(res / "cache" / "train.parquet"), "--work", str(work / "work"),
           "--out", str(work / "model"), "--preset-json", json.dumps(preset),
           "--training-json", json.dumps(training), "--tokenizer", str(res / "tokenizer")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def baseline_step_s(folder: Path, steps: int, warmup: int = 20) -> float:
    """Seconds per step of the previous recipe: (time of warmup + steps) - (time of warmup), over steps."""
    return (_time_previous_recipe(folder, warmup + steps) - _time_previous_recipe(folder, warmup)) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "demo_time.json"))
    p.add_argument("--keep", default=None, help="run in this folder (kept) instead of a temporary one")
    p.add_argument("--baseline-steps", type=int, default=100)
    args = p.parse_args(argv)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="reg2rg-demo-time-"))
    folder.mkdir(parents=True, exist_ok=True)
    wall, per_rule = run_demo(folder)
    step_s = baseline_step_s(folder, args.baseline_steps)
    train_s = per_rule.get("train", 0.0)
    previous_train_s = step_s * PREVIOUS_RECIPE["max_steps"]
    result = {
        "demo_wall_s": round(wall, 1), "goal_s": GOAL_S, "within_goal": wall <= GOAL_S,
        "per_rule_s": {k: round(v, 1) for k, v in sorted(per_rule.items(), key=lambda kv: -kv[1])},
        "baseline": {"recipe": PREVIOUS_RECIPE, "step_s": round(step_s, 4),
                     "train_s_extrapolated": round(previous_train_s, 1),
                     "demo_wall_s_extrapolated": round(wall - train_s + previous_train_s, 1)},
        "ratio_demo_vs_previous_recipe": round(wall / (wall - train_s + previous_train_s), 3),
        "load_average": list(os.getloadavg()), "cpus": os.cpu_count(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
