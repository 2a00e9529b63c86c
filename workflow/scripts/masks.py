"""Adapter: rule masks -> reg2rg.masks.masks_inventory."""
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.masks import masks_inventory  # noqa: E402

status = masks_inventory(
    pd.read_parquet(snakemake.input.inventory),
    pd.read_parquet(snakemake.input.volumes),
    volumes_dir=Path(snakemake.input.volumes).parent,
    out_dir=Path(snakemake.output.status).parent,
    threads=snakemake.threads,
)
status.to_parquet(snakemake.output.status, index=False)
