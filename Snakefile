# reg2rg: chest CT scans -> region masks -> region reports -> manifests -> cache -> Reg2RG training -> generation.
# The stages live in workflow/rules/, one file each; helpers in workflow/rules/common.smk.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from reg2rg.errors import ConfigError
from reg2rg.workflow_config import check_config

min_version("9.0")


configfile: "config/config.yaml"


# Every unknown key and every name that refers to nothing, each named with its path; then Snakemake's own
# validation, which fills in the schema's defaults.
try:
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(str(err)) from None
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/reports.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/viewer.smk"
include: "workflow/rules/ablation.smk"


rule all:
    input:
        default_targets(config["default_dataset"]),
        f"results/{config['default_dataset']}/viewer/index.html",
    default_target: True


# The CTRG chain on the CPU demo: DICOM ingest, SAT-format import (a stand-in for a SAT run), rules report
# splitting, manifests, cache, training of the tiny preset.
rule train_demo_ctrg:
    input:
        "results/demo_ctrg/model",


# CTRG-Chest-548K end to end: SAT masks, LLM-split region reports, manifests, cache, training (docs/ctrg.md).
rule train_ctrg:
    input:
        "results/ctrg/model",
