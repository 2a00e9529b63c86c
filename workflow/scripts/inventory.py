"""Adapter: rule inventory -> reg2rg.layouts (one row per input scan)."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.layouts import inventory  # noqa: E402

params = snakemake.params
inventory(params.layout, params.root, params.split).to_parquet(snakemake.output.inventory, index=False)
