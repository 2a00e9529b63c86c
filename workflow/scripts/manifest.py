"""Adapter: rule manifest -> reg2rg.manifest."""
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.manifest import build_manifest, write_manifests  # noqa: E402
from reg2rg.region_reports import read_region_reports  # noqa: E402

manifest = build_manifest(
    inventory=pd.read_parquet(snakemake.input.inventory),
    ingest_status=pd.read_parquet(snakemake.input.volumes),
    mask_status=pd.read_parquet(snakemake.input.masks),
    reports=read_region_reports(snakemake.input.reports),
    labels=pd.read_parquet(snakemake.input.labels),
    volumes_dir=Path(snakemake.input.volumes).parent,
    masks_dir=Path(snakemake.input.masks).parent,
)
write_manifests(manifest, {"train": snakemake.output.train, "test": snakemake.output.test})
