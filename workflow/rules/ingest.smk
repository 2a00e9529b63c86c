# Inventory (every input scan) and ingestion to canonical int16 HU volumes, one job per shard of scans
# (sharding: in the config; common.smk), gathered into volumes/status.parquet.


checkpoint inventory:
    input:
        raw=raw_input,
    output:
        inventory="results/{dataset}/inventory.parquet",
    params:
        root=lambda wc: dataset_root(wc.dataset),
        layout=lambda wc: dataset_config(wc.dataset)["layout"],
        split=lambda wc: dataset_config(wc.dataset).get("split"),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/inventory.log",
    script:
        "../scripts/inventory.py"


rule ingest_shard:
    input:
        inventory=ancient("results/{dataset}/inventory.parquet"),
    output:
        status="results/{dataset}/volumes/shards/{shard}.parquet",
    params:
        cases=shard_cases,
        rows=inventory_digest(shard_cases),
        out_dir=lambda wc, output: above_shards(output.status),
        root=lambda wc: dataset_root(wc.dataset),
        spacing=lambda wc: dataset_config(wc.dataset)["spacing"],
        already_hu=lambda wc: dataset_config(wc.dataset).get("already_hu", True),
        metadata=lambda wc: ctrate_metadata(wc.dataset),
        # datasets.<name>.ingest, its defaults (refuse) filled in by the schema
        fill_nonfinite=lambda wc: DATASETS[wc.dataset]["ingest"]["fill_nonfinite"],
        accept_implausible_hu=lambda wc: DATASETS[wc.dataset]["ingest"]["accept_implausible_hu"],
    threads: config.get("threads", {}).get("ingest", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/ingest/{shard}.log",
    script:
        "../scripts/ingest.py"


rule ingest:
    input:
        shards=shard_files("results/{dataset}/volumes/shards/{shard}.parquet", lambda wc: scan_shards(wc.dataset)),
    output:
        status="results/{dataset}/volumes/status.parquet",
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/ingest.log",
    script:
        "../scripts/gather.py"
