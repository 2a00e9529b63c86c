# Region reports (one text per region per scan) and abnormality labels where the data set has them.


rule reports:
    input:
        inventory="results/{dataset}/inventory.parquet",
    output:
        reports="results/{dataset}/reports/region_reports.parquet",
        labels="results/{dataset}/reports/labels.parquet",
    params:
        root=lambda wc: dataset_root(wc.dataset),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/reports.log",
    script:
        "../scripts/reports.py"


# CTRG-layout data sets come with whole reports: split them into region texts (reg2rg.split, docs/ctrg.md), one
# job per shard of sharding.reports_per_job reports (each LLM job serves or reaches the model on its own),
# gathered into the region report table. Every job shares the content-addressed answer cache.
rule split_reports_shard:
    input:
        inventory=ancient("results/{dataset}/inventory.parquet"),
    output:
        reports="results/{dataset}/reports/shards/{shard}.parquet",
        failures="results/{dataset}/reports/shards/{shard}.failures.parquet",
    params:
        cases=report_shard_cases,
        rows=inventory_digest(report_shard_cases),
        splitter=lambda wc: splitter_config(wc.dataset),
        cache=lambda wc: f"results/{wc.dataset}/reports/split_cache",
        root=lambda wc: dataset_root(wc.dataset),
    wildcard_constraints:
        dataset=datasets_regex(SPLIT_DATASETS),
    # vLLM's API server and tokenizer run beside the engine: a serving job needs more than one CPU
    threads: lambda wc: split_resource(wc.dataset, "threads", 1)
    resources:
        gpu=lambda wc: split_resource(wc.dataset, "gpu", 0),
        mem_mb=lambda wc: split_resource(wc.dataset, "mem_mb", 4000),
        runtime=lambda wc: split_resource(wc.dataset, "runtime", 240),
    conda:
        "../../envs/vllm.yaml"
    log:
        "results/{dataset}/logs/split_reports/{shard}.log",
        server="results/{dataset}/logs/split_reports/{shard}.vllm_serve.log",
    script:
        "../scripts/split_reports.py"


rule split_reports:
    input:
        inventory="results/{dataset}/inventory.parquet",
        shards=shard_files(
            "results/{dataset}/reports/shards/{shard}.parquet", lambda wc: scan_shards(wc.dataset, "reports_per_job")
        ),
        failures=shard_files(
            "results/{dataset}/reports/shards/{shard}.failures.parquet",
            lambda wc: scan_shards(wc.dataset, "reports_per_job"),
        ),
    output:
        reports="results/{dataset}/reports/region_reports.parquet",
        labels="results/{dataset}/reports/labels.parquet",
        failures="results/{dataset}/reports/split_failures.parquet",
    params:
        root=lambda wc: dataset_root(wc.dataset),
    wildcard_constraints:
        dataset=datasets_regex(SPLIT_DATASETS),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/split_reports.log",
    script:
        "../scripts/split_reports_gather.py"


ruleorder: split_reports > reports
