# Region reports (one text per region per scan) and abnormality labels where the data set has them.


rule reports:
    input:
        inventory="results/{dataset}/inventory.parquet",
    output:
        reports="results/{dataset}/reports/region_reports.parquet",
        labels="results/{dataset}/reports/labels.parquet",
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/reports.log",
    script:
        "../scripts/reports.py"
