"""Adapter: rule masks_shard -> reg2rg.masks.masks_inventory over one shard of the inventory."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.masks import masks_inventory  # noqa: E402
from reg2rg.shards import select_cases  # noqa: E402

status = masks_inventory(
    select_cases(pd.read_parquet(snakemake.input.inventory), snakemake.params.cases),
    pd.read_parquet(snakemake.input.volumes),
    volumes_dir=snakemake.params.volumes_dir,
    out_dir=snakemake.params.out_dir,
    source_root=snakemake.params.root,
    threads=snakemake.threads,
)
status.to_parquet(snakemake.output.status, index=False)
