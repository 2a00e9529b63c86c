# Evaluation of the test split's generated reports (reg2rg.evaluate, docs/evaluation.md): text metrics,
# clinical efficacy and region recognition in metrics.json, the report length plot beside it. Settings:
# evaluation: in the config; the decoding recorded is what generation: resolves to (its `decoding` preset applied),
# less the keys that do not change the output.


rule evaluate:
    input:
        predictions="results/{dataset}/predictions.parquet",
    output:
        metrics="results/{dataset}/metrics.json",
        lengths_plot="results/{dataset}/report_lengths.png",
    params:
        protocol=config["evaluation"]["protocol"],
        labeler=config["evaluation"]["labeler"],
        radbert_checkpoint=config["evaluation"]["radbert_checkpoint"],
        radbert_dir=config["evaluation"]["radbert_dir"],
        radbert_lowercase=config["evaluation"]["radbert_lowercase"],
        meta=lambda wc: {
            "dataset": wc.dataset,
            "model_preset": model_preset_name(wc.dataset),
            "decoding": generation_decoding(),
        },
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/evaluate.log",
    script:
        "../scripts/evaluate.py"
