# Helpers and input functions shared by the rule files.
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


def default_targets(dataset):
    return manifest_targets(dataset)
