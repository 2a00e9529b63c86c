"""Adapter: rule inventory -> reg2rg.datasets (one row per input scan)."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.datasets import inventory  # noqa: E402

params = snakemake.params
inventory(params.layout, params.root, params.split).to_parquet(snakemake.output.inventory, index=False)
