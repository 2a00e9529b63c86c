"""Adapter: rules evaluate and ablation_evaluate -> reg2rg.evaluate.evaluate_predictions."""
import hashlib
import json
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

from reg2rg.evaluate import evaluate_predictions, load_predictions, write_metrics  # noqa: E402
from reg2rg.evaluate.labelers import get_labeler  # noqa: E402

df = load_predictions(snakemake.input.predictions)
meta = dict(snakemake.params.meta)
meta["predictions_file"] = str(snakemake.input.predictions)
# The model's digest (recorded by training, carried by the predictions) identifies the run; without one,
# the digest of the settings this rule was given stands in.
if "config_digest" not in df.columns or df["config_digest"].dropna().empty:
    meta["config_digest"] = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
labeler = get_labeler(snakemake.params.labeler, snakemake.params.radbert_checkpoint, snakemake.params.radbert_dir,
                      lowercase=snakemake.params.radbert_lowercase)
out = Path(snakemake.output.metrics)
metrics = evaluate_predictions(df, protocol=snakemake.params.protocol, labeler=labeler, out_dir=out.parent,
                               meta=meta)
plot = out.parent / metrics["lengths"]["plot"]
if plot != Path(snakemake.output.lengths_plot):
    plot.replace(snakemake.output.lengths_plot)
write_metrics(metrics, out)
