# Manifests: one Parquet per split, every input scan accounted for. A checkpoint: the cache's shards are cut
# from the manifests (common.smk, split_shards).


checkpoint manifest:
    input:
        inventory="results/{dataset}/inventory.parquet",
        volumes="results/{dataset}/volumes/status.parquet",
        masks="results/{dataset}/masks/status.parquet",
        reports="results/{dataset}/reports/region_reports.parquet",
        labels="results/{dataset}/reports/labels.parquet",
    output:
        train="results/{dataset}/manifest/train.parquet",
        test="results/{dataset}/manifest/test.parquet",
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/manifest.log",
    script:
        "../scripts/manifest.py"
