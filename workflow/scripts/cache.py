"""Adapter: rule cache -> reg2rg.cache.cache_manifest."""
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.cache import cache_manifest  # noqa: E402
from reg2rg.manifest import read_manifest  # noqa: E402

status = cache_manifest(
    read_manifest(snakemake.input.manifest),
    Path(snakemake.output.status).parent,
    threads=snakemake.threads,
    input_size=snakemake.params.input_size,
)
status.to_parquet(snakemake.output.status, index=False)
