# Model-ready per-scan arrays, written once for the model input size (reg2rg.cache): training reads these and
# never a .nii.gz. The per-scan files ({case_id}.safetensors + .json) lie beside the status tables. The input
# size (x, y, z) is the one of the data set's model preset (presets.<model_preset>.input_size).


rule cache:
    input:
        manifest="results/{dataset}/manifest/{split}.parquet",
    output:
        status="results/{dataset}/cache/{split}.parquet",
    params:
        input_size=lambda wc: config.get("presets", {})
        .get(dataset_config(wc.dataset).get("model_preset", "paper"), {})
        .get("input_size", [256, 256, 64]),
    threads: config.get("threads", {}).get("cache", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/cache_{split}.log",
    script:
        "../scripts/cache.py"
