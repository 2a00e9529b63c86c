# Model-ready per-scan arrays, written once for the model input size (reg2rg.cache): training reads these and
# never a .nii.gz. The per-scan files ({case_id}.safetensors + .json) lie beside the status tables.


def cache_input_size(dataset):
    """The model input size (x, y, z) of the data set's model preset; the cache is built for it."""
    preset = config.get("presets", {}).get(dataset_config(dataset).get("model_preset", "paper"), {})
    return [int(v) for v in preset.get("input_size", [256, 256, 64])]


rule cache:
    input:
        manifest="results/{dataset}/manifest/{split}.parquet",
    output:
        status="results/{dataset}/cache/{split}.parquet",
    params:
        input_size=lambda wc: cache_input_size(wc.dataset),
    threads: config.get("threads", {}).get("cache", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/cache_{split}.log",
    script:
        "../scripts/cache.py"
