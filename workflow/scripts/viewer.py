"""Adapter: rule viewer -> reg2rg.viewer.build_viewer."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from pathlib import Path  # noqa: E402

from reg2rg.viewer import build_viewer  # noqa: E402

build_viewer(
    snakemake.input.predictions,
    snakemake.input.manifest,
    snakemake.input.metrics,
    Path(snakemake.output.index).parent,
    title=snakemake.params.title,
)
