"""Adapter: rule reports -> reg2rg.region_reports (region texts) and reg2rg.layouts.radgenome (labels)."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.layouts.radgenome import radgenome_labels  # noqa: E402
from reg2rg.region_reports import inventory_reports, write_region_reports  # noqa: E402

inv = pd.read_parquet(snakemake.input.inventory)
write_region_reports(inventory_reports(inv, snakemake.params.root), snakemake.output.reports)
radgenome_labels(inv, snakemake.params.root).to_parquet(snakemake.output.labels, index=False)
