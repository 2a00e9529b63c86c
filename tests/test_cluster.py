"""The cluster path on a real SLURM cluster.

`scripts/local_slurm.sh start` runs a one-node cluster on this machine (slurmctld, slurmd, slurmdbd on MariaDB,
munge; two GPUs declared as generic resources backed by plain files, partitions `cpu` and `gpu`). The workflow
goes through the SLURM executor plugin with the shipped profile (profiles/slurm) and a small overlay that the
test writes: the local account, quick status checks (kept steady by tests/slurm_quick_status.py, which runs
snakemake here), no retries (so that the faults below surface), kept SLURM logs, one thread for every job (two
jobs share the 2-CPU node at once, also two tests' jobs: a job here is mostly Python start-up), and no conda (the
test machine has none; the envs are checked by test_slurm_profile_runs_every_rule_in_its_env).

The tests need root and Debian's slurm-wlm, slurmdbd, munge and mariadb-server (the script installs them); they
are skipped, saying why, only where these cannot be installed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_runs import file_digests, jobs_run, manifests, workflow_copy

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
CLUSTER_SCRIPT = REPO / "scripts" / "local_slurm.sh"
QUICK_STATUS = Path(__file__).resolve().parent / "slurm_quick_status.py"
ACCOUNT = "reg2rg-test"  # made by the script


def _cluster_env() -> dict:
    """Start the local cluster (idempotent) and return the environment that reaches it; skip the test where the
    packages cannot be had."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (scripts/local_slurm.sh)")
    install = subprocess.run(["bash", str(CLUSTER_SCRIPT), "install"], capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        pytest.skip(f"SLURM packages cannot be installed here: {install.stderr.strip()[-500:]}")
    start = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, f"scripts/local_slurm.sh start failed:\n{start.stderr[-4000:]}"
    env = dict(os.environ)
    for line in start.stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            env[key] = value
    assert "SLURM_CONF" in env
    return env


@pytest.fixture(scope="module")
def slurm_env():
    # Left running afterwards: another xdist worker may still use it (`scripts/local_slurm.sh stop` stops it).
    return _cluster_env()


def slurm(env, *args: str) -> str:
    proc = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    return proc.stdout


# Rules that ask for 2 threads and are not in the shipped profile's set-threads: demo_data (its rule) and SAT's
# CPU stages (config threads.masks). The overlay gives them one thread, as it does the shipped profile's rules.
MULTI_THREAD_RULES = ("demo_data", "sat_prepare_shard", "sat_import_shard")


def cluster_profile(workdir: Path) -> Path:
    """The shipped profile with the test's overlay, as workdir/slurm-profile/config.yaml."""
    shipped = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile = dict(shipped)
    profile.pop("software-deployment-method")
    profile.update({
        "jobs": 4,
        "retries": 0,
        "latency-wait": 5,
        "default-resources": {**shipped["default-resources"], "slurm_account": ACCOUNT, "mem_mb": 2000,
                              "runtime": 30},
        "set-resources": {rule: {**res, "mem_mb": 2000} for rule, res in shipped["set-resources"].items()},
        "set-threads": {rule: 1 for rule in (*shipped["set-threads"], *MULTI_THREAD_RULES)},
        "slurm-init-seconds-before-status-checks": 1,
        "seconds-between-status-checks": 1,
        "slurm-keep-successful-logs": True,
    })
    assert profile["slurm-partition-config"] == "profiles/slurm/partitions.yaml"  # the shipped partitions
    out = workdir / "slurm-profile"
    out.mkdir(exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(profile))
    return out


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """snakemake through tests/slurm_quick_status.py: the plugin's status checks every second, not at its growing
    interval (up to 180 s), so that a test does not wait for snakemake to notice that a job ended."""
    return [sys.executable, str(QUICK_STATUS), "--workflow-profile", str(cluster_profile(workdir)), *args,
            "--configfile", "run.yaml"]


def run_on_cluster(workdir: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(workdir, *args), cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=1500)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake on SLURM failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}")
    return proc


def slurm_jobs(workdir: Path) -> dict[str, list[int]]:
    """Rule -> SLURM job ids, from the plugin's kept logs (.snakemake/slurm_logs/rule_<rule>/<wildcards>/<id>.log)."""
    jobs: dict[str, list[int]] = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = next(p for p in log.relative_to(workdir / ".snakemake" / "slurm_logs").parts if p.startswith("rule_"))
        jobs.setdefault(rule[len("rule_"):], []).append(int(log.stem))
    return jobs


def accounting(env, job_id: int) -> dict:
    """sacct's record of a job: State, Partition, AllocTRES."""
    out = slurm(env, "sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "State,Partition,AllocTRES")
    state, partition, tres = out.strip().splitlines()[0].split("|")
    return {"state": state, "partition": partition, "tres": tres}


def running_jobs(env, rule: str) -> list[int]:
    """SLURM ids of this rule's jobs that run now (the plugin puts `rule_<rule>_...` in the job comment)."""
    out = slurm(env, "squeue", "-h", "-t", "RUNNING", "-o", "%i|%k")
    return [int(i) for i, comment in (line.split("|", 1) for line in out.splitlines())
            if comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_wildcards")]


def wait_for(what: str, condition, proc: subprocess.Popen, timeout: float = 600):
    """Poll `condition` until it returns something true; fail if the snakemake run ends first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"snakemake ended (exit {proc.returncode}) before {what}:\n{out[-6000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_on_cluster(workdir: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(snakemake_cmd(workdir, *args), cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# ---------------------------------------------------------------------------------------------------------------

def test_shipped_slurm_profile_uses_the_plugins_keys():
    """Every key of profiles/slurm is a Snakemake or plugin option; nothing the plugin manages goes through
    slurm_extra; GPU jobs go to a partition with GPUs and CPU jobs to one without, by the plugin's selection."""
    from types import SimpleNamespace

    from snakemake.cli import get_argument_parser
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    profile_dir = REPO / "profiles" / "slurm"
    shipped = yaml.safe_load((profile_dir / "config.yaml").read_text())
    parser = get_argument_parser(profiles=[str(profile_dir)])
    args = parser.parse_args([])  # an unknown key in the profile is an error here
    assert args.executor == "slurm" and "conda" in str(args.software_deployment_method).lower()
    text = (profile_dir / "config.yaml").read_text()
    assert "slurm_extra" not in text
    assert "slurm_partition" not in yaml.safe_dump(shipped["default-resources"]) + yaml.safe_dump(shipped["set-resources"])

    partitions = read_partition_file(REPO / shipped["slurm-partition-config"])

    class Resources(dict):
        __getattr__ = dict.get

    def best(**resources):
        job = SimpleNamespace(resources=Resources(resources), threads=resources.get("threads", 1), name="x",
                              is_group=lambda: False)
        return get_best_partition(partitions, job, SimpleNamespace(warning=print, info=print, debug=print))

    assert best(gpu=2, mem_mb=128000, runtime=4320, threads=8) == "gpu"   # train (paper preset)
    assert best(gpu=1, mem_mb=64000, runtime=720, threads=6) == "gpu"     # sat_run, generate, serving split
    assert best(gpu=0, mem_mb=16000, runtime=720, threads=16) == "cpu"    # a per-scan shard
    assert best(mem_mb=8000, runtime=120) == "cpu"                        # a gather, the manifest


@pytest.mark.slow
def test_demo_on_slurm_equals_the_local_run_through_a_cancelled_shard_and_a_time_limit(slurm_env, tmp_path):
    """The demo workflow (8 scans, 4 per shard job, a short training) through sbatch equals the local unsharded
    run: same manifests, volumes, masks and cache files, same predictions. On the way an ingest shard is
    cancelled (scancel) while it runs and the train job is stopped by its time limit after a checkpoint; the same
    snakemake command again redoes only the cancelled shard's unfinished scans and resumes training."""
    config = {
        "datasets": {"demo": {"generate": {"cases": 8, "seed": 2, "test_fraction": 0.25, "shape": [112, 96, 32]}}},
        "threads": {"ingest": 1},
        # long enough to outlast SLURM's time-limit check (limits are whole minutes, enforced every 30 s)
        "training": {"tiny": {"max_steps": 500, "checkpoint_every": 50,
                              # the paper preset's two GPUs asked of the cluster; the tiny model trains on the CPU
                              "resources": {"gpu": 2, "cpu_fallback": True, "threads": 1, "mem_mb": 3000,
                                            "runtime": 30}}},
        "generation": {"resources": {"tiny": {"gpu": 1, "threads": 1, "mem_mb": 3000, "runtime": 30}}},
    }
    targets = ["results/demo/metrics.json"]
    # The local unsharded run, beside the cluster's (one core: the cluster's jobs have the other)
    local = workflow_copy(tmp_path / "local", {**config, "sharding": {"scans_per_job": None}})
    local_run = subprocess.Popen([str(SNAKEMAKE), *targets, "--cores", "1", "--configfile", "run.yaml"], cwd=local,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    try:
        _cancelled_shard_and_time_limit(slurm_env, tmp_path, config, targets, local, local_run)
    finally:
        if local_run.poll() is None:
            local_run.kill()


def _cancelled_shard_and_time_limit(env, tmp_path, config, targets, local, local_run):
    wd = workflow_copy(tmp_path / "cluster", {**config, "sharding": {"scans_per_job": 4}})
    res = wd / "results" / "demo"

    # 1. An ingest shard cancelled while it runs.
    run = start_on_cluster(wd, env, *targets)
    victim = wait_for("a running ingest shard", lambda: running_jobs(env, "ingest_shard"), run)[0]
    slurm(env, "scancel", str(victim))
    code, out = finish(run)
    assert code != 0 and "ingest_shard" in out, out[-4000:]
    assert accounting(env, victim)["state"].startswith("CANCELLED")
    cancelled_log = next((wd / ".snakemake" / "slurm_logs" / "rule_ingest_shard").rglob(f"{victim}.log"))
    shard = cancelled_log.parent.name.split("_")[-1]  # the plugin's folder per wildcards: demo_00001
    assert not (res / "volumes" / "shards" / f"{shard}.parquet").exists()
    done_before = {p.name for p in (res / "volumes").glob("*.nii.gz")}

    # 2. The same command: the shard reruns; then the train job is stopped by its time limit after a checkpoint.
    run = start_on_cluster(wd, env, *targets)
    trainer = wait_for("a training checkpoint",
                       lambda: list((res / "model_work").glob("checkpoints/*")) and running_jobs(env, "train"), run)[0]
    slurm(env, "scontrol", "update", f"jobid={trainer}", "timelimit=1")  # one minute: ends at the next check
    code, out = finish(run)
    assert code != 0 and "train" in out, out[-4000:]
    assert accounting(env, trainer)["state"] == "TIMEOUT"
    shard_log = (res / "logs" / "ingest" / f"{shard}.log").read_text()
    in_shard = [c for c in pd.read_parquet(res / "volumes" / "shards" / f"{shard}.parquet").case_id]
    skipped = shard_log.count("up to date")
    assert skipped == len([c for c in in_shard if f"{c}.nii.gz" in done_before]), shard_log
    assert len(in_shard) == 4

    # 3. The same command again: training resumes from its checkpoint and the run completes.
    proc = run_on_cluster(wd, env, *targets)
    train_log = (res / "logs" / "train.log").read_text()
    assert "resumed from" in train_log, train_log[-3000:]

    # Every job went through sbatch, the per-scan stages as shards.
    jobs = slurm_jobs(wd)
    assert len(jobs["ingest_shard"]) == 2 + 1 and len(jobs["masks_shard"]) == 2  # one shard twice
    assert len(jobs["train"]) == 2 and {"inventory", "manifest", "cache_shard", "generate", "evaluate"} <= set(jobs)
    assert "all" not in jobs and set(jobs) >= set(jobs_run(proc)) - {"all"}
    # The allocations: GPUs asked in the plugin's keys, jobs on the partition that fits.
    train = accounting(env, max(jobs["train"]))
    assert train["state"] == "COMPLETED" and train["partition"] == "gpu" and "gres/gpu=2" in train["tres"], train
    gen = accounting(env, jobs["generate"][0])
    assert gen["partition"] == "gpu" and "gres/gpu=1" in gen["tres"], gen
    for rule in ("ingest_shard", "masks_shard", "manifest", "cache_shard", "evaluate"):
        acc = accounting(env, max(jobs[rule]))
        assert acc["partition"] == "cpu" and "gres/gpu" not in acc["tres"], (rule, acc)

    # The results equal the local run's.
    code, out = finish(local_run, timeout=1500)
    assert code == 0, out[-5000:]
    pd.testing.assert_frame_equal(manifests(res), manifests(local / "results" / "demo"))
    for pattern in ("volumes/*.nii.gz", "masks/*.nii.gz", "cache/*.safetensors"):
        a, b = file_digests(res, pattern), file_digests(local / "results" / "demo", pattern)
        assert a and a == b, pattern
    ours = pd.read_parquet(res / "predictions.parquet")
    theirs = pd.read_parquet(local / "results" / "demo" / "predictions.parquet")
    assert ours["prediction"].tolist() == theirs["prediction"].tolist()
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (res, local / "results" / "demo"))
    for metrics in (ours, theirs):
        metrics.pop("created")  # when it was written
    assert ours == theirs


@pytest.mark.slow
def test_node_down_fails_the_running_jobs_clearly_and_a_rerun_completes(slurm_env, tmp_path):
    env = slurm_env
    node = slurm(env, "sinfo", "-h", "-N", "-o", "%N").split()[0]
    wd = workflow_copy(tmp_path / "wf", {"datasets": {"demo": {"generate": {
        "cases": 4, "seed": 3, "test_fraction": 0.25, "shape": [112, 96, 32]}}}})
    targets = ["results/demo/masks/status.parquet"]
    run = start_on_cluster(wd, env, *targets)
    try:
        victim = wait_for("a running ingest shard", lambda: running_jobs(env, "ingest_shard"), run)[0]
        slurm(env, "scontrol", "update", f"nodename={node}", "state=down", "reason=reg2rg-test")
        code, out = finish(run)
    finally:
        slurm(env, "scontrol", "update", f"nodename={node}", "state=resume")
    assert code != 0
    assert accounting(env, victim)["state"] == "NODE_FAIL"
    assert "Error in rule ingest_shard" in out and "NODE_FAIL" in out, out[-4000:]
    assert str(victim) in out  # the job and its SLURM log are named
    deadline = time.monotonic() + 60
    while slurm(env, "sinfo", "-h", "-N", "-o", "%T").split()[0] not in ("idle", "mixed", "allocated"):
        assert time.monotonic() < deadline, "the node did not come back"
        time.sleep(1)
    run_on_cluster(wd, env, *targets)
    status = pd.read_parquet(wd / "results" / "demo" / "masks" / "status.parquet")
    assert len(status) == 4 and (status.status == "ok").all()


@pytest.mark.slow
def test_sat_and_serving_jobs_get_their_gpu_on_the_gpu_partition(slurm_env, tmp_path):
    """CTRG through SLURM: SAT (a stand-in program speaking SAT's formats, started with torchrun from a checkout)
    and the LLM split that serves its model (a stand-in `vllm` on the PATH speaking the OpenAI protocol) each
    run as GPU jobs, with one GPU allocated, on the `gpu` partition; the manifests come out complete."""
    from standins import sat_standin_checkout, vllm_standin_bin

    from reg2rg import demo

    env = dict(slurm_env)
    root = tmp_path / "ctrg"
    summary = demo.make_demo_dataset("ctrg", root, cases=4, seed=6, shape=(96, 80, 24), sat_standin=False)
    sat_repo = sat_standin_checkout(tmp_path / "SAT")
    (tmp_path / "sat.pth").write_text("weights")
    fake_bin = vllm_standin_bin(tmp_path / "bin")
    env["PATH"] = os.pathsep.join([str(fake_bin), str(Path(sys.executable).parent), env.get("PATH", "")])
    small = {"threads": 1, "mem_mb": 2000, "runtime": 30}
    wd = workflow_copy(tmp_path / "wf", {
        "sharding": {"scans_per_job": 2, "reports_per_job": 4},
        "datasets": {"ctrg": {
            "root": str(root),
            "segmentation": {"backend": "sat", "prompts": {"heart": ["heart"], "bone": ["sternum"],
                                                            "abdomen": ["liver"]},
                             "sat": {"repo": str(sat_repo), "checkpoint": str(tmp_path / "sat.pth"),
                                     "text_encoder_checkpoint": str(tmp_path / "sat.pth"),
                                     "text_encoder_model": str(tmp_path / "BioLORD-2023-C"), **small}},
            "splitter": {"kind": "llm", "llm": {"max_attempts": 2, "concurrency": 2, "serve": {
                "enabled": True, "model_path": "/models/Qwen2.5-14B-Instruct", "startup_timeout_s": 120,
                "resources": {"gpu": 1, **small}}}}}}})
    run_on_cluster(wd, env, "results/ctrg/manifest/train.parquet", "results/ctrg/manifest/test.parquet")
    m = manifests(wd / "results" / "ctrg")
    assert sorted(m.case_id) == sorted(summary["labels"]) and (m.status == "included").all()
    jobs = slurm_jobs(wd)
    assert len(jobs["sat_run"]) == 2 and len(jobs["sat_prepare_shard"]) == 2 and len(jobs["split_reports_shard"]) == 1
    for rule in ("sat_run", "split_reports_shard"):
        for job in jobs[rule]:
            acc = accounting(env, job)
            assert acc["partition"] == "gpu" and "gres/gpu=1" in acc["tres"], (rule, acc)
    for rule in ("sat_prepare_shard", "sat_import_shard", "ingest_shard"):
        acc = accounting(env, jobs[rule][0])
        assert acc["partition"] == "cpu" and "gres/gpu" not in acc["tres"], (rule, acc)
