"""Adapter: rule sat_prepare -> reg2rg.segment.stage.prepare_inventory (SAT's input + jsonl)."""
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.segment.stage import prepare_inventory  # noqa: E402

status = prepare_inventory(
    pd.read_parquet(snakemake.input.inventory),
    pd.read_parquet(snakemake.input.volumes),
    volumes_dir=Path(snakemake.input.volumes).parent,
    out_dir=Path(snakemake.output.status).parent,
    jsonl_path=snakemake.output.jsonl,
    prompts=snakemake.params.prompts,
    sat_dataset=snakemake.params.sat_dataset,
    window=snakemake.params.window,
    threads=snakemake.threads,
)
status.to_parquet(snakemake.output.status, index=False)
