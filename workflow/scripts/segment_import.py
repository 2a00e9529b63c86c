"""Adapter: rule sat_import -> reg2rg.segment.stage.import_inventory (SAT output -> results/{dataset}/masks/)."""
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.segment.stage import import_inventory  # noqa: E402

out_dir = Path(snakemake.output.status).parent
status = import_inventory(
    pd.read_parquet(snakemake.input.inventory),
    pd.read_parquet(snakemake.input.prepared),
    volumes_dir=Path(snakemake.input.volumes).parent,
    records_dir=Path(snakemake.input.prepared).parent,
    sat_dir=snakemake.params.sat_dir,
    out_dir=out_dir,
    work_dir=out_dir.parent / "segment" / "regions",
    prompts=snakemake.params.prompts,
    threads=snakemake.threads,
    standin_index=snakemake.params.standin,
)
status.to_parquet(snakemake.output.status, index=False)
