"""Adapter: rule generate -> reg2rg.generate.generate."""
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import torch  # noqa: E402

from reg2rg.generate import GenerationSettings, generate  # noqa: E402

torch.set_num_threads(snakemake.threads)
generate(
    snakemake.input.model,
    snakemake.input.manifest,
    snakemake.output.predictions,
    cache=Path(snakemake.input.cache).parent,
    settings=GenerationSettings.from_dict(snakemake.params.settings),
    dataset_name=snakemake.wildcards.dataset,
)
