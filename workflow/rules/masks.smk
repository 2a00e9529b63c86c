# Region masks brought onto the ingested grid in physical space, one uint16 label file per scan; one job per
# shard of scans (the ingest shards), gathered into masks/status.parquet. Data sets segmented by SAT make their
# mask shards in segment.smk (rule sat_import_shard) instead.


rule masks_shard:
    input:
        inventory=ancient("results/{dataset}/inventory.parquet"),
        volumes="results/{dataset}/volumes/shards/{shard}.parquet",
    output:
        status="results/{dataset}/masks/shards/{shard}.parquet",
    params:
        cases=shard_cases,
        rows=inventory_digest(shard_cases),
        volumes_dir=lambda wc, input: above_shards(input.volumes),
        out_dir=lambda wc, output: above_shards(output.status),
        root=lambda wc: dataset_root(wc.dataset),
    threads: config.get("threads", {}).get("masks", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/masks/{shard}.log",
    script:
        "../scripts/masks.py"


rule masks:
    input:
        shards=shard_files("results/{dataset}/masks/shards/{shard}.parquet", lambda wc: scan_shards(wc.dataset)),
    output:
        status="results/{dataset}/masks/status.parquet",
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/masks.log",
    script:
        "../scripts/gather.py"
