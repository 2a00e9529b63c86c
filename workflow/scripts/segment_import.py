"""Adapter: rule sat_import_shard -> reg2rg.segment.stage.import_inventory (SAT output -> results/{dataset}/masks/)."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.segment.stage import import_inventory  # noqa: E402
from reg2rg.shards import select_cases  # noqa: E402

params = snakemake.params
status = import_inventory(
    select_cases(pd.read_parquet(snakemake.input.inventory), params.cases),
    pd.read_parquet(snakemake.input.prepared),
    volumes_dir=params.volumes_dir,
    records_dir=params.records_dir,
    sat_dir=params.sat_dir,
    out_dir=params.out_dir,
    work_dir=params.work_dir,
    prompts=params.prompts,
    pleura_margin_mm=params.pleura_margin_mm,
    threads=snakemake.threads,
    standin_index=params.standin,
)
status.to_parquet(snakemake.output.status, index=False)
