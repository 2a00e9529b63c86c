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


# CTRG-layout data sets come with whole reports: split them into region texts (reg2rg.split, docs/ctrg.md).
rule split_reports:
    input:
        inventory="results/{dataset}/inventory.parquet",
    output:
        reports="results/{dataset}/reports/region_reports.parquet",
        labels="results/{dataset}/reports/labels.parquet",
        failures="results/{dataset}/reports/split_failures.parquet",
    params:
        splitter=lambda wc: splitter_config(wc.dataset),
        cache=lambda wc: f"results/{wc.dataset}/reports/split_cache",
    wildcard_constraints:
        dataset=datasets_regex(SPLIT_DATASETS),
    resources:
        gpu=lambda wc: split_resource(wc.dataset, "gpu", 0),
        mem_mb=lambda wc: split_resource(wc.dataset, "mem_mb", 4000),
        runtime=lambda wc: split_resource(wc.dataset, "runtime", 240),
    conda:
        "../../envs/vllm.yaml"
    log:
        "results/{dataset}/logs/split_reports.log",
        server="results/{dataset}/logs/vllm_serve.log",
    script:
        "../scripts/split_reports.py"


ruleorder: split_reports > reports
