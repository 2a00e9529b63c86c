# Helpers and input functions shared by the rule files.
import os
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from snakemake.exceptions import WorkflowError

from reg2rg.ablation import merge_overrides


def pinned_cuda_version(env_file):
    """X of the `cuda-version=X` dependency of a conda environment file."""
    import yaml

    for dep in yaml.safe_load(Path(env_file).read_text())["dependencies"]:
        if isinstance(dep, str) and dep.replace(" ", "").startswith("cuda-version="):
            return dep.split("=", 1)[1].split("#")[0].strip()
    raise WorkflowError(f"{env_file}: no cuda-version=X dependency (the CUDA of its PyTorch build)")


# Without --use-conda, shell steps (`accelerate launch`, `python -m reg2rg ...`) run in the environment Snakemake
# runs in, also when it was started as .venv/bin/snakemake without activating the venv.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    shell.prefix(f'set -euo pipefail; export PATH="{Path(sys.executable).parent}:$PATH"; ')
else:
    # envs/core.yaml pins a CUDA build of PyTorch (`cuda-version=X`), which conda resolves only where it sees a
    # driver of that CUDA: this process creates the environments, so unless the user set CONDA_OVERRIDE_CUDA it is
    # the pinned version, and the CUDA build resolves on a login node without GPUs too (docs/cluster.md).
    os.environ.setdefault("CONDA_OVERRIDE_CUDA", pinned_cuda_version(Path(workflow.basedir) / "envs" / "core.yaml"))

DATASETS = config["datasets"]
SPLITS = ["train", "test"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),
    shard=r"\d+",


def dataset_config(dataset):
    return DATASETS[dataset]


def is_generated(dataset):
    """True for synthetic data sets that the workflow makes itself (`generate:` in the config)."""
    return "generate" in DATASETS[dataset]


def dataset_root(dataset):
    """The folder holding a data set's source files; a one-line error when the user has not set it."""
    if is_generated(dataset):
        return f"results/{dataset}/raw"
    root = DATASETS[dataset].get("root")
    if not root:
        raise WorkflowError(
            f"data set '{dataset}' has no root: set datasets.{dataset}.root in config/config.yaml "
            "to the folder of your download"
        )
    return root


def ctrate_metadata(dataset):
    """datasets.<name>.ctrate_metadata (source split -> CT-RATE v1 metadata CSV; the config check refuses it
    outside the radgenome layout), for the ingest stage; the inventory does not name these files (they may lie
    outside the root)."""
    return {k: v for k, v in (DATASETS[dataset].get("ctrate_metadata") or {}).items() if v} or None


def raw_input(wildcards):
    """Generated data sets depend on the rule that makes them; a user's download is outside the DAG."""
    if is_generated(wildcards.dataset):
        return f"results/{wildcards.dataset}/raw"
    return []


def manifest_targets(dataset):
    return expand("results/{dataset}/manifest/{split}.parquet", dataset=dataset, split=SPLITS)


def model_preset_name(dataset):
    """The model preset of a data set (datasets.<name>.model_preset; presets: in the config)."""
    name = DATASETS[dataset].get("model_preset", "paper")
    if name not in config.get("presets", {}):
        raise WorkflowError(f"datasets.{dataset}.model_preset: no preset {name!r} under presets: in the config")
    return name


def model_preset(dataset):
    return config["presets"][model_preset_name(dataset)]


def training_settings(dataset):
    """training.<preset> of the data set's model preset, with the data set's own `training:` overrides."""
    name = model_preset_name(dataset)
    settings = config.get("training", {}).get(name)
    if settings is None:
        raise WorkflowError(f"no training settings for preset {name!r}: add training.{name} to the config")
    return {**settings, **DATASETS[dataset].get("training", {})}


# The shell of rules train and ablation_train (inputs manifest, cache; output model; params cpu_config,
# zero2_config, deepspeed_config, preset, preset_json, training_json, tokenizer, work, cpu_fallback):
# `accelerate launch` of reg2rg.train, with gpu == 0 one CPU process with {threads} torch threads, with gpu > 0
# DeepSpeed ZeRO-2 with one process per GPU of the job, which refuses to start unless PyTorch sees them.
# training.<preset>.resources.cpu_fallback (tests of the cluster path only): ask the cluster for the GPUs, train
# on the CPU as with gpu 0.
TRAIN_SHELL = (
    "if [ {resources.gpu} -gt 0 ] && [ {params.cpu_fallback} = no ]; then"
    " launch='--config_file {params.zero2_config} --deepspeed_config_file {params.deepspeed_config}"
    " --num_processes {resources.gpu}'; require='--require-gpus {resources.gpu}';"
    " else launch='--config_file {params.cpu_config} --num_processes 1 --num_cpu_threads_per_process {threads}';"
    " require=''; fi;"
    " accelerate launch $launch -m reg2rg.train $require"
    " --manifest {input.manifest} --cache {input.cache} --work {params.work} --out {output.model}"
    " --dataset {wildcards.dataset} --preset {params.preset} --preset-json {params.preset_json:q}"
    " --training-json {params.training_json:q} {params.tokenizer} > {log} 2>&1"
)


def training_cpu_fallback(dataset):
    """'yes' when training.<preset>.resources.cpu_fallback is set (the TRAIN_SHELL param), else 'no'."""
    return "yes" if training_settings(dataset).get("resources", {}).get("cpu_fallback") else "no"


def training_threads(dataset):
    """CPU threads of a training job: `training.<preset>.resources.threads`, else 2 or the DataLoader workers.
    On the CPU they are also torch's threads, fixed so that a run's numbers do not depend on the machine's cores."""
    settings = training_settings(dataset)
    return settings.get("resources", {}).get("threads") or max(2, settings.get("num_workers", 0))


# generation: less its resources, as rules generate and ablation_generate pass it (reg2rg.generate.GenerationSettings)
GENERATION_SETTINGS = {k: v for k, v in config.get("generation", {}).items() if k != "resources"}


def generation_resources(dataset):
    return config.get("generation", {}).get("resources", {}).get(model_preset_name(dataset), {})


def generation_decoding():
    """The decoding settings generation:'s keys resolve to (its `decoding` preset applied), as the generate rule
    records them in predictions.parquet; the evaluate rules record the same in metrics.json."""
    from reg2rg.generate import GenerationSettings

    return GenerationSettings.from_dict(GENERATION_SETTINGS).decoding()


def generation_threads(dataset):
    """CPU threads of a generation job, also torch's (workflow/scripts/generate.py): `resources.threads`, else 2."""
    return generation_resources(dataset).get("threads", 2)


def needs_tokenizer(dataset):
    """The tiny presets train their tokenizer on the data set's training reports (rule tokenizer)."""
    preset = model_preset(dataset)
    return not preset.get("tokenizer_path") and not (preset.get("llm") or {}).get("path")


def tokenizer_input(wildcards):
    if needs_tokenizer(wildcards.dataset):
        return f"results/{wildcards.dataset}/tokenizer"
    return []


def launch_config(path):
    """A launch config under config/ (accelerate/*.yaml, deepspeed/*.json) by absolute path."""
    return str(Path(workflow.basedir) / "config" / path)


def prediction_targets(dataset):
    return [f"results/{dataset}/predictions.parquet"]


def metrics_targets(dataset):
    return [f"results/{dataset}/metrics.json"]


# ---- Segmentation and report splitting of data sets without masks or region reports (docs/ctrg.md).
SAT_JSONL_DATASET = "reg2rg"  # the `dataset` field of SAT's jsonl: SAT writes {rcd_dir}/reg2rg/seg_<id>/


def datasets_regex(names):
    """A wildcard constraint matching exactly these data sets (nothing when the list is empty)."""
    return "|".join(names) if names else "(?!x)x"


def segmentation_config(dataset):
    return DATASETS[dataset].get("segmentation") or {}


def segmentation_backend(dataset):
    """provided (masks on disk), sat or sat_standin."""
    return segmentation_config(dataset).get("backend", "provided")


SAT_DATASETS = [d for d in DATASETS if segmentation_backend(d) in ("sat", "sat_standin")]
SAT_RUN_DATASETS = [d for d in DATASETS if segmentation_backend(d) == "sat"]
SPLIT_DATASETS = [d for d in DATASETS if DATASETS[d].get("layout") == "ctrg"]


def sat_setting(dataset, key, default=None, required=False):
    """datasets.<name>.segmentation.sat.<key>; a one-line error naming the key when required and unset."""
    value = (segmentation_config(dataset).get("sat") or {}).get(key, default)
    if required and value in (None, ""):
        dataset_root(dataset)  # a missing data set root is the first thing to fix
        raise WorkflowError(
            f"data set '{dataset}' runs SAT: set datasets.{dataset}.segmentation.sat.{key} in config/config.yaml"
        )
    return value


SAT_BIOLORD_ID = "FremyCompany/BioLORD-2023-C"  # reg2rg.segment.sat.BIOLORD_ID (not importable in envs/sat.yaml)


def sat_text_encoder_model(dataset):
    """segmentation.sat.text_encoder_model as an absolute path; an error that says why when unset or not a model."""
    value = sat_setting(dataset, "text_encoder_model")
    if value in (None, ""):
        dataset_root(dataset)
        raise WorkflowError(
            f"data set '{dataset}' runs SAT: set datasets.{dataset}.segmentation.sat.text_encoder_model to a local "
            f"folder of {SAT_BIOLORD_ID}. SAT's text encoder is built on it and would fetch it from the Hugging Face "
            "hub at every start, which fails on a compute node without internet; download it once where there is "
            f"internet: huggingface-cli download {SAT_BIOLORD_ID} --local-dir DIR (docs/ctrg.md)"
        )
    path = os.path.abspath(os.path.expanduser(str(value)))
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise WorkflowError(
            f"datasets.{dataset}.segmentation.sat.text_encoder_model: {path} has no config.json "
            f"(not a downloaded {SAT_BIOLORD_ID})"
        )
    return path


def sat_output_input(wildcards):
    """SAT's output folder, made by the sat_run job or, in its raw data, by the demo's stand-in for a SAT run."""
    if segmentation_backend(wildcards.dataset) == "sat_standin":
        return f"results/{wildcards.dataset}/raw"
    return f"results/{wildcards.dataset}/segment/sat_output/{wildcards.shard}"


def sat_output_dir(wildcards, input):
    """Where SAT wrote seg_<id>/."""
    if segmentation_backend(wildcards.dataset) == "sat_standin":
        return str(Path(input.sat) / "sat_standin" / SAT_JSONL_DATASET)
    return str(Path(input.sat) / SAT_JSONL_DATASET)


def sat_standin_index(wildcards, input):
    if segmentation_backend(wildcards.dataset) == "sat_standin":
        return str(Path(input.sat) / "sat_standin" / "standin.json")
    return None


def splitter_config(dataset):
    return DATASETS[dataset].get("splitter") or {"kind": "rules"}


def llm_serve_config(dataset):
    """splitter.llm.serve when the split job starts `vllm serve` itself, else None."""
    s = splitter_config(dataset)
    serve = (s.get("llm") or {}).get("serve") or {}
    return serve if s.get("kind") == "llm" and serve.get("enabled") else None


def split_resource(dataset, key, default):
    """A resource of the split_reports job: from the serve block when it serves the LLM itself, else gpu 0."""
    serve = llm_serve_config(dataset)
    if serve is None:
        return 0 if key == "gpu" else default
    return (serve.get("resources") or {}).get(key, 1 if key == "gpu" else default)

def default_targets(dataset):
    return manifest_targets(dataset) + prediction_targets(dataset) + metrics_targets(dataset)


# The ablation study (ablation.smk): each setting is the data set's preset and training with overrides.
ABLATIONS = config.get("ablations", {}).get("settings", {})


def ablation_preset(dataset, ablation):
    """The model preset of one setting: the data set's preset with the setting's model overrides."""
    return merge_overrides(model_preset(dataset), ABLATIONS[ablation].get("model", {}))


def _training_run(settings):
    return {k: v for k, v in settings.items() if k != "resources"}


def ablation_training(dataset, ablation):
    """The training settings of one setting: the data set's, then ablations.training, then the setting's."""
    merged = merge_overrides(training_settings(dataset), config["ablations"].get("training", {}))
    return _training_run(merge_overrides(merged, ABLATIONS[ablation].get("training", {})))


def ablation_model(wc):
    """A setting that is exactly the data set's own model and training (the full model `d` with no
    ablations.training) reuses results/{dataset}/model instead of training it again."""
    same = ablation_preset(wc.dataset, wc.ablation) == model_preset(wc.dataset) and ablation_training(
        wc.dataset, wc.ablation
    ) == _training_run(training_settings(wc.dataset))
    return f"results/{wc.dataset}/model" if same else f"results/{wc.dataset}/ablation/{wc.ablation}/model"


# ---- Sharding (reg2rg.shards, docs/cluster.md): the per-scan stages run as one job per shard of
# sharding.scans_per_job scans. The shard plan comes from the inventory (a checkpoint); the cache's plan from a
# split's manifest (a checkpoint too). A shard job reads its table as ancient() input and records the digest of
# its rows as a param: it reruns when its own rows change, not whenever the whole table is rewritten.
import functools

import pandas as pd

from reg2rg import shards as shard_plans


def sharding_setting(dataset, key):
    """sharding.<key>, overridden by datasets.<name>.sharding.<key>."""
    return {**config.get("sharding", {}), **(DATASETS[dataset].get("sharding") or {})}.get(key)


@functools.lru_cache(maxsize=64)
def _read_table(path, mtime_ns):
    return pd.read_parquet(path)


def read_table(path):
    """A Parquet table read once per version of the file (the DAG asks for it once per shard)."""
    return _read_table(str(path), Path(path).stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _plan(path, mtime_ns, split, scans_per_job):
    table = _read_table(path, mtime_ns)
    if split is not None:
        table = table[table.split == split]
    return shard_plans.plan_shards(table.case_id, scans_per_job)


def inventory_path(dataset):
    """The inventory of a data set; raises Snakemake's IncompleteCheckpointException until it is made."""
    return checkpoints.inventory.get(dataset=dataset).output.inventory


def manifest_path(dataset, split):
    return getattr(checkpoints.manifest.get(dataset=dataset).output, split)


def scan_shards(dataset, key="scans_per_job"):
    """Shard name -> case ids over the whole inventory (key: reports_per_job for the report splitting)."""
    path = inventory_path(dataset)
    per_job = sharding_setting(dataset, key)
    if per_job is None and key != "scans_per_job":
        per_job = sharding_setting(dataset, "scans_per_job")
    return _plan(str(path), Path(path).stat().st_mtime_ns, None, per_job)


def split_shards(dataset, split):
    """Shard name -> case ids of one split's manifest (the cache stage)."""
    path = manifest_path(dataset, split)
    return _plan(str(path), Path(path).stat().st_mtime_ns, split, sharding_setting(dataset, "scans_per_job"))


def shard_cases_of(plan, wc):
    if wc.shard not in plan:
        raise WorkflowError(f"data set '{wc.dataset}' has no shard {wc.shard} (shards {min(plan)} to {max(plan)})")
    return plan[wc.shard]


def shard_cases(wc):
    return shard_cases_of(scan_shards(wc.dataset), wc)


def report_shard_cases(wc):
    return shard_cases_of(scan_shards(wc.dataset, "reports_per_job"), wc)


def cache_shard_cases(wc):
    return shard_cases_of(split_shards(wc.dataset, wc.split), wc)


def inventory_digest(cases_of):
    """A param: the digest of the shard's inventory rows (and the stage's settings go in params of their own)."""
    return lambda wc: shard_plans.rows_digest(read_table(inventory_path(wc.dataset)), cases_of(wc))


def _file_state(path):
    p = Path(path) if isinstance(path, str) and path else None
    if p is None or not p.exists():
        return None
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def cache_digest(wc):
    """The cache shard's manifest rows and the size and time of their volume and mask files."""
    table = read_table(manifest_path(wc.dataset, wc.split))
    cases = cache_shard_cases(wc)
    rows = table.set_index("case_id").loc[cases]
    files = {c: [_file_state(v), _file_state(m)] for c, v, m in zip(cases, rows.volume, rows["mask"])}
    return shard_plans.rows_digest(table, cases, extra=files)


def above_shards(path):
    """The stage folder of a shard's table (results/{dataset}/volumes for .../volumes/shards/00000.parquet)."""
    p = Path(path)
    while p.name != "shards":
        p = p.parent
    return str(p.parent)


def shard_files(pattern, plan_of):
    """An input function: `pattern` (with {dataset}, {shard} and any other wildcard) for every shard."""

    def files(wc):
        return [pattern.format(**dict(wc.items()), shard=s) for s in plan_of(wc)]

    return files
