"""Adapter: rule demo_data -> reg2rg.demo.make_demo_dataset."""
from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.demo import make_demo_dataset  # noqa: E402

gen = snakemake.params.generate
make_demo_dataset(
    snakemake.params.layout,
    snakemake.output.root,
    cases=gen["cases"],
    seed=gen["seed"],
    test_fraction=gen.get("test_fraction", 0.25),
    shape=gen.get("shape"),
    workers=snakemake.threads,
    report_style=gen.get("report_style", "varied"),
)
