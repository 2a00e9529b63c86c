"""Adapter: rule sat_prepare_shard -> reg2rg.segment.stage.prepare_inventory (SAT's input + the shard's jsonl)."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.segment.stage import prepare_inventory  # noqa: E402
from reg2rg.shards import select_cases  # noqa: E402

params = snakemake.params
status = prepare_inventory(
    select_cases(pd.read_parquet(snakemake.input.inventory), params.cases),
    pd.read_parquet(snakemake.input.volumes),
    volumes_dir=params.volumes_dir,
    out_dir=params.out_dir,
    jsonl_path=snakemake.output.jsonl,
    prompts=params.prompts,
    sat_dataset=params.sat_dataset,
    window=params.window,
    threads=snakemake.threads,
)
status.to_parquet(snakemake.output.status, index=False)
