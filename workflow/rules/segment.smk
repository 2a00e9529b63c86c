# Segmentation for data sets whose region masks are not provided (datasets.<name>.segmentation.backend):
#   sat          SAT's input on SAT's own grid -> SAT's inference (GPU, the user's checkout) -> import
#   sat_standin  the same, with the demo generator's SAT-format files in place of a SAT run (demo_ctrg)
#   provided     (the default) masks on disk: rule masks (masks.smk)
# The import writes results/{dataset}/masks/ in the masks stage's format; see docs/ctrg.md.
import os


rule sat_prepare:
    input:
        inventory="results/{dataset}/inventory.parquet",
        volumes="results/{dataset}/volumes/status.parquet",
    output:
        jsonl="results/{dataset}/segment/sat_input.jsonl",
        status="results/{dataset}/segment/input/status.parquet",
    params:
        prompts=lambda wc: segmentation_config(wc.dataset).get("prompts"),
        window=lambda wc: segmentation_config(wc.dataset).get("windowed_window"),
        sat_dataset=SAT_JSONL_DATASET,
    wildcard_constraints:
        dataset=datasets_regex(SAT_DATASETS),
    threads: config.get("threads", {}).get("masks", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/sat_prepare.log",
    script:
        "../scripts/segment_prepare.py"


rule sat_run:
    input:
        jsonl="results/{dataset}/segment/sat_input.jsonl",
    output:
        sat=directory("results/{dataset}/segment/sat_output"),
    params:
        repo=lambda wc: os.path.abspath(sat_setting(wc.dataset, "repo", required=True)),
        checkpoint=lambda wc: os.path.abspath(sat_setting(wc.dataset, "checkpoint", required=True)),
        text_encoder_checkpoint=lambda wc: os.path.abspath(
            sat_setting(wc.dataset, "text_encoder_checkpoint", required=True)
        ),
        vision_backbone=lambda wc: sat_setting(wc.dataset, "vision_backbone", "UNET-L"),
        text_encoder=lambda wc: sat_setting(wc.dataset, "text_encoder", "ours"),
        batchsize_3d=lambda wc: sat_setting(wc.dataset, "batchsize_3d", 1),
        max_queries=lambda wc: sat_setting(wc.dataset, "max_queries", 256),
        port=lambda wc: sat_setting(wc.dataset, "master_port", 29517),
        jsonl=lambda wc, input: os.path.abspath(input.jsonl),
        out=lambda wc, output: os.path.abspath(output.sat),
        log=lambda wc: os.path.abspath(f"results/{wc.dataset}/logs/sat_run.log"),
    wildcard_constraints:
        dataset=datasets_regex(SAT_RUN_DATASETS),
    resources:
        gpu=1,
        mem_mb=lambda wc: sat_setting(wc.dataset, "mem_mb", 64000),
        runtime=lambda wc: sat_setting(wc.dataset, "runtime", 720),
    conda:
        "../../envs/sat.yaml"
    log:
        "results/{dataset}/logs/sat_run.log",
    shell:
        # SAT's inference.py (torchrun, one GPU) reads the jsonl and writes {out}/reg2rg/seg_<id>/<prompt>.nii.gz
        """
        mkdir -p {params.out} $(dirname {params.log})
        cd {params.repo}
        if ! python -c 'import dynamic_network_architectures' 2> /dev/null; then
            echo "SAT needs its U-Net package:" \
                "pip install -e {params.repo}/model/dynamic-network-architectures-main" > {params.log}
            exit 1
        fi
        torchrun --nproc_per_node=1 --master_port {params.port} inference.py \
            --rcd_dir {params.out} --datasets_jsonl {params.jsonl} \
            --vision_backbone {params.vision_backbone} --checkpoint {params.checkpoint} \
            --text_encoder {params.text_encoder} --text_encoder_checkpoint {params.text_encoder_checkpoint} \
            --max_queries {params.max_queries} --batchsize_3d {params.batchsize_3d} > {params.log} 2>&1
        """


rule sat_import:
    input:
        inventory="results/{dataset}/inventory.parquet",
        prepared="results/{dataset}/segment/input/status.parquet",
        volumes="results/{dataset}/volumes/status.parquet",
        sat=sat_output_input,
    output:
        status="results/{dataset}/masks/status.parquet",
    params:
        sat_dir=sat_output_dir,
        standin=sat_standin_index,
        prompts=lambda wc: segmentation_config(wc.dataset).get("prompts"),
    wildcard_constraints:
        dataset=datasets_regex(SAT_DATASETS),
    threads: config.get("threads", {}).get("masks", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/sat_import.log",
    script:
        "../scripts/segment_import.py"


ruleorder: sat_import > masks
