"""The conda environments of envs/ as the cluster profile uses them, and the train job's refusal to train on the CPU
when its preset asks for GPUs.

Snakemake's own dry run with `--software-deployment-method conda` (and `--list-conda-envs`) calls `conda info`
before it plans a job, and this machine has no conda; so the test loads the workflow through Snakemake's API with
the deployment method the profile sets and reads, for every rule, the environment file that the dry run would
create (`Rule.expand_conda_env`, what a job's `conda_env_spec` is made from).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"

# rule -> environment file; every other rule that runs something runs in envs/core.yaml
SPECIAL_ENVS = {"sat_run": "sat.yaml", "split_reports_shard": "vllm.yaml"}
TARGET_RULES = {"all", "train_demo_ctrg", "train_ctrg"}  # only inputs: nothing runs


def profile_deployment() -> set:
    from snakemake.cli import get_argument_parser

    args = get_argument_parser(profiles=[str(PROFILE)]).parse_args([])
    return set(args.software_deployment_method)


@pytest.fixture(scope="module")
def conda_workflow():
    """The workflow loaded with the profile's deployment method, and CONDA_OVERRIDE_CUDA as loading it left it."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DeploymentSettings, OutputSettings, ResourceSettings,
                                          StorageSettings)
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    deployment = profile_deployment()
    assert DeploymentMethod.CONDA in deployment, "profiles/slurm must set software-deployment-method: conda"
    saved = os.environ.pop("CONDA_OVERRIDE_CUDA", None)
    try:
        with SnakemakeApi(OutputSettings()) as api:
            wf = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                              storage_settings=StorageSettings(),
                              deployment_settings=DeploymentSettings(deployment_method=deployment),
                              snakefile=REPO / "Snakefile", workdir=REPO)
            yield wf._workflow, os.environ.get("CONDA_OVERRIDE_CUDA")
    finally:
        os.environ.pop("CONDA_OVERRIDE_CUDA", None)
        if saved is not None:
            os.environ["CONDA_OVERRIDE_CUDA"] = saved


def test_slurm_profile_runs_every_rule_in_its_env(conda_workflow):
    workflow, _ = conda_workflow
    seen = {}
    for rule in workflow.rules:
        if rule.name in TARGET_RULES:
            assert rule.norun and rule.conda_env is None
            continue
        assert rule.conda_env, f"rule {rule.name} has no conda: directive"
        spec = rule.expand_conda_env({})
        path = Path(str(spec.file)).resolve()
        assert path.is_file() and path.parent == REPO / "envs", f"{rule.name}: {path}"
        seen[rule.name] = path.name
    assert {"sat_run", "split_reports_shard", "train", "generate", "ingest_shard"} <= set(seen)
    for name, env in seen.items():
        assert env == SPECIAL_ENVS.get(name, "core.yaml"), f"rule {name} runs in envs/{env}"


def test_core_env_pins_a_cuda_torch_and_the_workflow_sets_conda_override_cuda(conda_workflow):
    _, override = conda_workflow
    deps = yaml.safe_load((REPO / "envs" / "core.yaml").read_text())["dependencies"]
    torch = [d for d in deps if isinstance(d, str) and d.startswith("pytorch")]
    assert torch and "build='cuda*'" in torch[0]
    cuda = [d for d in deps if isinstance(d, str) and d.startswith("cuda-version=")]
    assert cuda and override == cuda[0].split("=", 1)[1]
    assert int(override.split(".")[0]) >= 12  # sm_90 (H100, H200) kernels


def test_sat_env_is_torch_2_with_sats_unet_package_from_the_env_file():
    env = yaml.safe_load((REPO / "envs" / "sat.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    torch = [p for p in pip if p.startswith("torch==")]
    assert torch and int(torch[0].split("==")[1].split(".")[0]) >= 2
    unet = [p for p in pip if "dynamic-network-architectures" in p]
    assert unet and unet[0].startswith("git+https://") and "@" in unet[0] and "#subdirectory=" in unet[0]
    assert "git" in env["dependencies"]  # pip needs it for the git+ requirement


def test_train_refuses_to_start_on_the_cpu_when_its_preset_asks_for_gpus(tmp_path):
    """What the workflow's train job runs with `resources.gpu: 2` (TRAIN_SHELL: `--require-gpus 2`), on this
    machine without GPUs: exit status 2 before anything is read, a message naming the preset and what PyTorch saw."""
    import torch

    assert not torch.cuda.is_available()
    cmd = [sys.executable, "-m", "reg2rg.train", "--require-gpus", "2", "--preset", "paper",
           "--manifest", str(tmp_path / "absent.parquet"), "--cache", str(tmp_path / "cache"),
           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    msg = proc.stderr
    assert "preset 'paper' (training.paper.resources.gpu) asks for 2 GPU(s) but PyTorch sees 0" in msg
    assert f"PyTorch {torch.__version__}" in msg and "CUDA_VISIBLE_DEVICES=" in msg
    assert not (tmp_path / "work").exists() and not (tmp_path / "model").exists()
