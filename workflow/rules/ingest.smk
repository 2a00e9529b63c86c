# Inventory (every input scan) and ingestion to canonical int16 HU volumes.


rule inventory:
    input:
        raw=raw_input,
    output:
        inventory="results/{dataset}/inventory.parquet",
    params:
        root=lambda wc: dataset_root(wc.dataset),
        layout=lambda wc: dataset_config(wc.dataset)["layout"],
        metadata=lambda wc: dataset_config(wc.dataset).get("ctrate_metadata"),
        split=lambda wc: dataset_config(wc.dataset).get("split"),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/inventory.log",
    script:
        "../scripts/inventory.py"


rule ingest:
    input:
        inventory="results/{dataset}/inventory.parquet",
    output:
        status="results/{dataset}/volumes/status.parquet",
    params:
        spacing=lambda wc: dataset_config(wc.dataset)["spacing"],
        already_hu=lambda wc: dataset_config(wc.dataset).get("already_hu", True),
    threads: config.get("threads", {}).get("ingest", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/ingest.log",
    script:
        "../scripts/ingest.py"
