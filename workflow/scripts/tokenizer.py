"""Adapter: rule tokenizer -> reg2rg.train.train_tokenizer."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.train import train_tokenizer  # noqa: E402

train_tokenizer(snakemake.input.manifest, int(snakemake.params.vocab_size), snakemake.output.tokenizer)
