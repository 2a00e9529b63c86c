"""Adapter: rule cache_shard -> reg2rg.cache.cache_manifest over one shard of a split's manifest."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.cache import cache_manifest  # noqa: E402
from reg2rg.manifest import read_manifest  # noqa: E402
from reg2rg.shards import select_cases  # noqa: E402

status = cache_manifest(
    select_cases(read_manifest(snakemake.input.manifest), snakemake.params.cases),
    snakemake.params.out_dir,
    threads=snakemake.threads,
    input_size=snakemake.params.input_size,
)
status.to_parquet(snakemake.output.status, index=False)
