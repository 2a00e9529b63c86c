# Region masks brought onto the ingested grid in physical space, one uint16 label file per scan.


rule masks:
    input:
        inventory="results/{dataset}/inventory.parquet",
        volumes="results/{dataset}/volumes/status.parquet",
    output:
        status="results/{dataset}/masks/status.parquet",
    threads: config.get("threads", {}).get("masks", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/masks.log",
    script:
        "../scripts/masks.py"
