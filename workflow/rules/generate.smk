# Report generation for the test split with the trained model (reg2rg.generate; decoding: generation: in the
# config).


rule generate:
    input:
        model="results/{dataset}/model",
        manifest="results/{dataset}/manifest/test.parquet",
        cache="results/{dataset}/cache/test.parquet",
    output:
        predictions="results/{dataset}/predictions.parquet",
    params:
        settings=GENERATION_SETTINGS,
    threads: lambda wc: generation_threads(wc.dataset)
    resources:
        gpu=lambda wc: generation_resources(wc.dataset).get("gpu", 0),
        mem_mb=lambda wc: generation_resources(wc.dataset).get("mem_mb", 8000),
        runtime=lambda wc: generation_resources(wc.dataset).get("runtime", 60),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/generate.log",
    script:
        "../scripts/generate.py"
