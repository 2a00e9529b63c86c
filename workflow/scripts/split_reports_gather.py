"""Adapter: rule split_reports (the gather) -> the data set's region report table and failures from its shards
(reg2rg.shards, reg2rg.region_reports) and the labels (reg2rg.layouts.ctrg)."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.layouts.ctrg import ctrg_labels  # noqa: E402
from reg2rg.region_reports import read_region_reports, write_region_reports  # noqa: E402
from reg2rg.shards import gather  # noqa: E402

write_region_reports(gather(read_region_reports(p) for p in snakemake.input.shards), snakemake.output.reports)
gather(pd.read_parquet(p) for p in snakemake.input.failures).to_parquet(snakemake.output.failures, index=False)
ctrg_labels(pd.read_parquet(snakemake.input.inventory), snakemake.params.root).to_parquet(snakemake.output.labels, index=False)
