# The ablation study (the paper's Table 5; reg2rg/ablation.py, docs/evaluation.md): every setting under
# ablations.settings in the config is the data set's model preset with the setting's model overrides, trained
# with the preset's training settings (plus ablations.training and the setting's training overrides),
# generated and evaluated as the main model is; results/{dataset}/ablation/table.md holds one row per setting
# of ablations.table.
import json


wildcard_constraints:
    ablation="|".join(ABLATIONS) or "no-ablations",


# The ablation rules are the main rules (train.smk, generate.smk, evaluate.smk) with the setting's paths, model
# preset and training settings: the same params, threads and resources otherwise.
use rule train as ablation_train with:
    output:
        model=directory("results/{dataset}/ablation/{ablation}/model"),
    params:
        preset_json=lambda wc: json.dumps(ablation_preset(wc.dataset, wc.ablation), sort_keys=True),
        training_json=lambda wc: json.dumps(ablation_training(wc.dataset, wc.ablation), sort_keys=True),
        work=lambda wc: f"results/{wc.dataset}/ablation/{wc.ablation}/model_work",
    log:
        "results/{dataset}/logs/ablation/{ablation}/train.log",


use rule generate as ablation_generate with:
    input:
        model=ablation_model,
        manifest="results/{dataset}/manifest/test.parquet",
        cache="results/{dataset}/cache/test.parquet",
    output:
        predictions="results/{dataset}/ablation/{ablation}/predictions.parquet",
    log:
        "results/{dataset}/logs/ablation/{ablation}/generate.log",


use rule evaluate as ablation_evaluate with:
    input:
        predictions="results/{dataset}/ablation/{ablation}/predictions.parquet",
    output:
        metrics="results/{dataset}/ablation/{ablation}/metrics.json",
        lengths_plot="results/{dataset}/ablation/{ablation}/report_lengths.png",
    params:
        meta=lambda wc: {
            "dataset": wc.dataset,
            "model_preset": f"{model_preset_name(wc.dataset)}+ablation:{wc.ablation}",
            "decoding": generation_decoding(),
        },
    log:
        "results/{dataset}/logs/ablation/{ablation}/evaluate.log",


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
        names=config["ablations"]["table"],
        overrides=lambda wc: {
            k: {**v.get("model", {}), "report_pairing": ablation_training(wc.dataset, k).get("report_pairing", "own")}
            for k, v in ABLATIONS.items()
        },
        paper=lambda wc: config["ablations"].get("paper", {}).get(wc.dataset, {}),
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/ablation/table.log",
    script:
        "../scripts/ablation_table.py"
