# Segmentation for data sets whose region masks are not provided (datasets.<name>.segmentation.backend):
#   sat          SAT's input on SAT's own grid -> SAT's inference (GPU, the user's checkout) -> import
#   sat_standin  the same, with the demo generator's SAT-format files in place of a SAT run (demo_ctrg)
#   provided     (the default) masks on disk: rule masks (masks.smk)
# The import writes results/{dataset}/masks/ in the masks stage's format; see docs/ctrg.md. Each step runs as
# one job per shard of scans (sharding: in the config), SAT too: one GPU job per shard.
import os


rule sat_prepare_shard:
    input:
        inventory=ancient("results/{dataset}/inventory.parquet"),
        volumes="results/{dataset}/volumes/shards/{shard}.parquet",
    output:
        jsonl="results/{dataset}/segment/input/shards/{shard}.jsonl",
        status="results/{dataset}/segment/input/shards/{shard}.parquet",
    params:
        cases=shard_cases,
        rows=inventory_digest(shard_cases),
        volumes_dir=lambda wc, input: above_shards(input.volumes),
        out_dir=lambda wc, output: above_shards(output.status),
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
        "results/{dataset}/logs/sat_prepare/{shard}.log",
    script:
        "../scripts/segment_prepare.py"


rule sat_run:
    input:
        jsonl="results/{dataset}/segment/input/shards/{shard}.jsonl",
    output:
        sat=directory("results/{dataset}/segment/sat_output/{shard}"),
    params:
        repo=lambda wc: os.path.abspath(sat_setting(wc.dataset, "repo", required=True)),
        checkpoint=lambda wc: os.path.abspath(sat_setting(wc.dataset, "checkpoint", required=True)),
        text_encoder_checkpoint=lambda wc: os.path.abspath(
            sat_setting(wc.dataset, "text_encoder_checkpoint", required=True)
        ),
        text_encoder_model=lambda wc: sat_text_encoder_model(wc.dataset),
        biolord_id=SAT_BIOLORD_ID,
        cwd=lambda wc: os.path.abspath(f"results/{wc.dataset}/segment/sat_cwd/{wc.shard}"),
        vision_backbone=lambda wc: sat_setting(wc.dataset, "vision_backbone", "UNET-L"),
        text_encoder=lambda wc: sat_setting(wc.dataset, "text_encoder", "ours"),
        batchsize_3d=lambda wc: sat_setting(wc.dataset, "batchsize_3d", 1),
        max_queries=lambda wc: sat_setting(wc.dataset, "max_queries", 256),
        port=lambda wc: sat_setting(wc.dataset, "master_port") or 0,
        jsonl=lambda wc, input: os.path.abspath(input.jsonl),
        out=lambda wc, output: os.path.abspath(output.sat),
        log=lambda wc: os.path.abspath(f"results/{wc.dataset}/logs/sat_run/{wc.shard}.log"),
    wildcard_constraints:
        dataset=datasets_regex(SAT_RUN_DATASETS),
    # SAT's inference reads with 4 DataLoader workers beside the main process
    threads: lambda wc: sat_setting(wc.dataset, "threads", 6)
    resources:
        gpu=1,
        mem_mb=lambda wc: sat_setting(wc.dataset, "mem_mb", 64000),
        runtime=lambda wc: sat_setting(wc.dataset, "runtime", 720),
    conda:
        "../../envs/sat.yaml"
    log:
        "results/{dataset}/logs/sat_run/{shard}.log",
    shell:
        # SAT's inference.py (torchrun, one GPU) reads the jsonl and writes {out}/reg2rg/seg_<id>/<prompt>.nii.gz.
        # master_port 0 (the default): a free port of this node, so that two SAT jobs on one node do not collide.
        # SAT's text encoder loads the hub id {biolord_id} at every start: it runs in {cwd}, where that id is a link
        # to the local copy (segmentation.sat.text_encoder_model), with the hub off (reg2rg.segment.sat.BIOLORD_ID).
        """
        mkdir -p {params.out} $(dirname {params.log}) $(dirname {params.cwd}/{params.biolord_id})
        ln -sfn {params.text_encoder_model} {params.cwd}/{params.biolord_id}
        cd {params.repo}
        if ! python -c 'import dynamic_network_architectures' 2> /dev/null; then
            echo "SAT needs its U-Net package (dynamic_network_architectures), which envs/sat.yaml installs:" \
                "run with --software-deployment-method conda (profiles/slurm sets it)" > {params.log}
            exit 1
        fi
        port={params.port}
        if [ "$port" = 0 ]; then
            port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        fi
        cd {params.cwd}
        export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
        torchrun --nproc_per_node=1 --master_port "$port" {params.repo}/inference.py \
            --rcd_dir {params.out} --datasets_jsonl {params.jsonl} \
            --vision_backbone {params.vision_backbone} --checkpoint {params.checkpoint} \
            --text_encoder {params.text_encoder} --text_encoder_checkpoint {params.text_encoder_checkpoint} \
            --max_queries {params.max_queries} --batchsize_3d {params.batchsize_3d} > {params.log} 2>&1
        """


rule sat_import_shard:
    input:
        inventory=ancient("results/{dataset}/inventory.parquet"),
        prepared="results/{dataset}/segment/input/shards/{shard}.parquet",
        volumes="results/{dataset}/volumes/shards/{shard}.parquet",
        sat=sat_output_input,
    output:
        status="results/{dataset}/masks/shards/{shard}.parquet",
    params:
        cases=shard_cases,
        rows=inventory_digest(shard_cases),
        volumes_dir=lambda wc, input: above_shards(input.volumes),
        records_dir=lambda wc, input: above_shards(input.prepared),
        out_dir=lambda wc, output: above_shards(output.status),
        work_dir=lambda wc, output: str(Path(above_shards(output.status)).parent / "segment" / "regions"),
        sat_dir=sat_output_dir,
        standin=sat_standin_index,
        prompts=lambda wc: segmentation_config(wc.dataset).get("prompts"),
        pleura_margin_mm=lambda wc: segmentation_config(wc.dataset).get("pleura_margin_mm"),
    wildcard_constraints:
        dataset=datasets_regex(SAT_DATASETS),
    threads: config.get("threads", {}).get("masks", 2)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/sat_import/{shard}.log",
    script:
        "../scripts/segment_import.py"


ruleorder: sat_import_shard > masks_shard
