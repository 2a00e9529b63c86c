# Helpers and input functions shared by the rule files.
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from snakemake.exceptions import WorkflowError

from reg2rg.ablation import merge_overrides

# Without --use-conda, shell steps (`accelerate launch`, `python -m reg2rg ...`) run in the environment Snakemake
# runs in, also when it was started as .venv/bin/snakemake without activating the venv.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    shell.prefix(f'set -euo pipefail; export PATH="{Path(sys.executable).parent}:$PATH"; ')

DATASETS = config["datasets"]
SPLITS = ["train", "test"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),


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
# zero2_config, deepspeed_config, preset, preset_json, training_json, tokenizer, work): `accelerate launch` of
# reg2rg.train, with gpu == 0 one CPU process with {threads} torch threads, with gpu > 0 DeepSpeed ZeRO-2 with one
# process per GPU of the job.
TRAIN_SHELL = (
    "if [ {resources.gpu} -gt 0 ]; then"
    " launch='--config_file {params.zero2_config} --deepspeed_config_file {params.deepspeed_config}"
    " --num_processes {resources.gpu}';"
    " else launch='--config_file {params.cpu_config} --num_processes 1 --num_cpu_threads_per_process {threads}'; fi;"
    " accelerate launch $launch -m reg2rg.train"
    " --manifest {input.manifest} --cache {input.cache} --work {params.work} --out {output.model}"
    " --dataset {wildcards.dataset} --preset {params.preset} --preset-json {params.preset_json:q}"
    " --training-json {params.training_json:q} {params.tokenizer} > {log} 2>&1"
)


def training_threads(dataset):
    """CPU threads of a training job: `training.<preset>.resources.threads`, else 2 or the DataLoader workers.
    On the CPU they are also torch's threads, fixed so that a run's numbers do not depend on the machine's cores."""
    settings = training_settings(dataset)
    return settings.get("resources", {}).get("threads") or max(2, settings.get("num_workers", 0))


def generation_resources(dataset):
    return config.get("generation", {}).get("resources", {}).get(model_preset_name(dataset), {})


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


def sat_output_input(wildcards):
    """SAT's output folder, made by the sat_run job or, in its raw data, by the demo's stand-in for a SAT run."""
    if segmentation_backend(wildcards.dataset) == "sat_standin":
        return f"results/{wildcards.dataset}/raw"
    return f"results/{wildcards.dataset}/segment/sat_output"


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
