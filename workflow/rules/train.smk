# Training: the tiny tokenizer (presets without a pretrained one) and the model, with
# `accelerate launch -m reg2rg.train` (docs/training.md). Checkpoints go to results/{dataset}/model_work/, which
# is no output: a rerun after a failure or a time limit resumes from the latest checkpoint there.
import json


rule tokenizer:
    input:
        manifest="results/{dataset}/manifest/train.parquet",
    output:
        tokenizer=directory("results/{dataset}/tokenizer"),
    params:
        vocab_size=lambda wc: model_preset(wc.dataset).get("tokenizer_vocab_size", 1024),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/tokenizer.log",
    script:
        "../scripts/tokenizer.py"


rule train:
    input:
        manifest="results/{dataset}/manifest/train.parquet",
        cache="results/{dataset}/cache/train.parquet",
        tokenizer=tokenizer_input,
    output:
        model=directory("results/{dataset}/model"),
    params:
        cpu_config=launch_config("accelerate/cpu.yaml"),
        zero2_config=launch_config("accelerate/zero2.yaml"),
        deepspeed_config=launch_config("deepspeed/zero2.json"),
        preset=lambda wc: model_preset_name(wc.dataset),
        preset_json=lambda wc: json.dumps(model_preset(wc.dataset), sort_keys=True),
        training_json=lambda wc: json.dumps(_training_run(training_settings(wc.dataset)), sort_keys=True),
        tokenizer=lambda wc, input: f"--tokenizer {input.tokenizer}" if input.tokenizer else "",
        cpu_fallback=lambda wc: training_cpu_fallback(wc.dataset),
        work=lambda wc: f"results/{wc.dataset}/model_work",
    threads: lambda wc: training_threads(wc.dataset)
    resources:
        gpu=lambda wc: training_settings(wc.dataset).get("resources", {}).get("gpu", 0),
        mem_mb=lambda wc: training_settings(wc.dataset).get("resources", {}).get("mem_mb", 8000),
        runtime=lambda wc: training_settings(wc.dataset).get("resources", {}).get("runtime", 60),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/train.log",
    shell:
        TRAIN_SHELL
