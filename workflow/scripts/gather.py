"""Adapter: the gather rules (ingest, masks, sat_prepare, cache) -> reg2rg.shards.gather_parquet."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.shards import gather_parquet  # noqa: E402

gather_parquet(snakemake.input.shards, snakemake.output[0])
