"""Adapter: rule ingest_shard -> reg2rg.ingest.ingest_inventory over one shard of the inventory."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.ingest import ingest_inventory  # noqa: E402
from reg2rg.shards import select_cases  # noqa: E402

status = ingest_inventory(
    select_cases(pd.read_parquet(snakemake.input.inventory), snakemake.params.cases),
    snakemake.params.out_dir,
    source_root=snakemake.params.root,
    spacing=snakemake.params.spacing,
    already_hu=snakemake.params.already_hu,
    metadata=snakemake.params.metadata,
    fill_nonfinite=snakemake.params.fill_nonfinite,
    accept_implausible_hu=snakemake.params.accept_implausible_hu,
    threads=snakemake.threads,
)
status.to_parquet(snakemake.output.status, index=False)
