# Model-ready per-scan arrays, written once for the model input size (reg2rg.cache): training reads these and
# never a .nii.gz. The per-scan files ({case_id}.safetensors + .json) lie beside the status tables; one job per
# shard of a split's manifest (sharding: in the config), gathered into cache/{split}.parquet. The input size
# (x, y, z) is the one of the data set's model preset (presets.<model_preset>.input_size).


rule cache_shard:
    input:
        manifest=ancient("results/{dataset}/manifest/{split}.parquet"),
        # both outputs of the manifest checkpoint: the shard plan reads it (also inside a cluster job)
        checkpoint=ancient(expand("results/{{dataset}}/manifest/{split}.parquet", split=SPLITS)),
    output:
        status="results/{dataset}/cache/shards/{split}/{shard}.parquet",
    params:
        cases=cache_shard_cases,
        rows=cache_digest,
        out_dir=lambda wc, output: above_shards(output.status),
        input_size=lambda wc: model_preset(wc.dataset).get("input_size", [256, 256, 64]),
    threads: config.get("threads", {}).get("cache", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/cache/{split}/{shard}.log",
    script:
        "../scripts/cache.py"


rule cache:
    input:
        shards=shard_files(
            "results/{dataset}/cache/shards/{split}/{shard}.parquet", lambda wc: split_shards(wc.dataset, wc.split)
        ),
    output:
        status="results/{dataset}/cache/{split}.parquet",
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/cache_{split}.log",
    script:
        "../scripts/gather.py"
