"""Adapter: rule ablation_table -> reg2rg.ablation.ablation_table."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.ablation import ablation_table, write_table  # noqa: E402

names = list(snakemake.params.names)
rows = [(name, snakemake.params.overrides[name], path) for name, path in zip(names, snakemake.input.metrics)]
title = f"Ablation on {snakemake.wildcards.dataset} (test split)"
write_table(snakemake.output.table, ablation_table(rows, paper=snakemake.params.paper, title=title))
