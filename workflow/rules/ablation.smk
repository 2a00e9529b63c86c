# The ablation study (the paper's Table 5; reg2rg/ablation.py, docs/evaluation.md): every setting under
# ablations.settings in the config is the data set's model preset with the setting's model overrides, trained
# with the preset's training settings (plus ablations.training and the setting's training overrides),
# generated and evaluated as the main model is; results/{dataset}/ablation/table.md holds one row per setting
# of ablations.table.
import json


wildcard_constraints:
    ablation="|".join(ABLATIONS) or "no-ablations",


rule ablation_train:
    input:
        manifest="results/{dataset}/manifest/train.parquet",
        cache="results/{dataset}/cache/train.parquet",
        tokenizer=tokenizer_input,
    output:
        model=directory("results/{dataset}/ablation/{ablation}/model"),
    params:
        cpu_config=launch_config("accelerate/cpu.yaml"),
        zero2_config=launch_config("accelerate/zero2.yaml"),
        deepspeed_config=launch_config("deepspeed/zero2.json"),
        preset=lambda wc: model_preset_name(wc.dataset),
        preset_json=lambda wc: json.dumps(ablation_preset(wc.dataset, wc.ablation), sort_keys=True),
        training_json=lambda wc: json.dumps(ablation_training(wc.dataset, wc.ablation), sort_keys=True),
        tokenizer=lambda wc, input: f"--tokenizer {input.tokenizer}" if input.tokenizer else "",
        cpu_fallback=lambda wc: training_cpu_fallback(wc.dataset),
        work=lambda wc: f"results/{wc.dataset}/ablation/{wc.ablation}/model_work",
    threads: lambda wc: training_threads(wc.dataset)
    resources:
        gpu=lambda wc: training_settings(wc.dataset).get("resources", {}).get("gpu", 0),
        mem_mb=lambda wc: training_settings(wc.dataset).get("resources", {}).get("mem_mb", 8000),
        runtime=lambda wc: training_settings(wc.dataset).get("resources", {}).get("runtime", 60),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/ablation/{ablation}/train.log",
    shell:
        TRAIN_SHELL


rule ablation_generate:
    input:
        model=ablation_model,
        manifest="results/{dataset}/manifest/test.parquet",
        cache="results/{dataset}/cache/test.parquet",
    output:
        predictions="results/{dataset}/ablation/{ablation}/predictions.parquet",
    params:
        settings={k: v for k, v in config.get("generation", {}).items() if k != "resources"},
    threads: lambda wc: generation_threads(wc.dataset)
    resources:
        gpu=lambda wc: generation_resources(wc.dataset).get("gpu", 0),
        mem_mb=lambda wc: generation_resources(wc.dataset).get("mem_mb", 8000),
        runtime=lambda wc: generation_resources(wc.dataset).get("runtime", 60),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/ablation/{ablation}/generate.log",
    script:
        "../scripts/generate.py"


rule ablation_evaluate:
    input:
        predictions="results/{dataset}/ablation/{ablation}/predictions.parquet",
    output:
        metrics="results/{dataset}/ablation/{ablation}/metrics.json",
        lengths_plot="results/{dataset}/ablation/{ablation}/report_lengths.png",
    params:
        protocol=config.get("evaluation", {}).get("protocol", "all"),
        labeler=config.get("evaluation", {}).get("labeler", "rules"),
        radbert_checkpoint=config.get("evaluation", {}).get("radbert_checkpoint"),
        radbert_dir=config.get("evaluation", {}).get("radbert_dir"),
        radbert_lowercase=config.get("evaluation", {}).get("radbert_lowercase", True),
        meta=lambda wc: {
            "dataset": wc.dataset,
            "model_preset": f"{model_preset_name(wc.dataset)}+ablation:{wc.ablation}",
            "decoding": generation_decoding(),
        },
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/ablation/{ablation}/evaluate.log",
    script:
        "../scripts/evaluate.py"


rule ablation_table:
    input:
        metrics=lambda wc: expand(
            "results/{dataset}/ablation/{ablation}/metrics.json",
            dataset=wc.dataset,
            ablation=config["ablations"]["table"],
        ),
    output:
        table="results/{dataset}/ablation/table.md",
    params:
        names=config.get("ablations", {}).get("table", []),
        overrides=lambda wc: {
            k: {**v.get("model", {}), "report_pairing": ablation_training(wc.dataset, k).get("report_pairing", "own")}
            for k, v in ABLATIONS.items()
        },
        paper=lambda wc: config.get("ablations", {}).get("paper", {}).get(wc.dataset, {}),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/ablation/table.log",
    script:
        "../scripts/ablation_table.py"
