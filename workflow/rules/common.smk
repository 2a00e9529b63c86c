# Helpers and input functions shared by the rule files.
from pathlib import Path

from snakemake.exceptions import WorkflowError

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
    """training.<preset> of the data set's model preset."""
    name = model_preset_name(dataset)
    settings = config.get("training", {}).get(name)
    if settings is None:
        raise WorkflowError(f"no training settings for preset {name!r}: add training.{name} to the config")
    return settings


def generation_resources(dataset):
    return config.get("generation", {}).get("resources", {}).get(model_preset_name(dataset), {})


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


def default_targets(dataset):
    return manifest_targets(dataset) + prediction_targets(dataset) + metrics_targets(dataset)
