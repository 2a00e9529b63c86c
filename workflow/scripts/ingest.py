"""Adapter: rule ingest -> reg2rg.ingest.ingest_inventory."""
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.ingest import ingest_inventory  # noqa: E402

status = ingest_inventory(
    pd.read_parquet(snakemake.input.inventory),
    Path(snakemake.output.status).parent,
    spacing=snakemake.params.spacing,
    already_hu=snakemake.params.already_hu,
    threads=snakemake.threads,
)
status.to_parquet(snakemake.output.status, index=False)
