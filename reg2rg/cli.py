"""The `reg2rg` command. Argument definitions only: each command's work is imported when it runs,
so that `reg2rg --help` and light commands start fast (no torch, SimpleITK or pandas at import)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys


def _call(target: str):
    """Return a runner that imports `module:function` lazily and calls it with the parsed args."""

    def run(args: argparse.Namespace):
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args)

    return run


def _add_labeler_options(p):
    """How report texts are labelled with the 18 abnormalities (label, evaluate)."""
    p.add_argument("--labeler", choices=["rules", "radbert"], default="rules")
    p.add_argument("--checkpoint", help="radbert: RadBertClassifier.pth state dict")
    p.add_argument("--radbert", help="radbert: local RadBERT-RoBERTa-4m folder")
    p.add_argument("--radbert-lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="radbert: lower-case the text first (default: on; --no-radbert-lowercase feeds it cased, "
                        "as the authors' evaluation did)")


def _add_decoding_options(p):
    """Decoding settings; unset ones come from the config's `generation:` (greedy by default)."""
    p.add_argument("--max-new-tokens", type=int, help="default 512")
    p.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                   help="sample instead of greedy decoding (default: greedy)")
    p.add_argument("--num-beams", type=int, help="default 1")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=int, help="sampling top-k (default 0: off)")
    p.add_argument("--top-p", type=float, help="sampling top-p (default 1.0)")
    p.add_argument("--repetition-penalty", type=float, help="default 1.0")


def _paths(p, reads=(), writes=()):
    """Declare which arguments of a command are files it reads and files it writes (as the user types them:
    `input`, `--ct`), so that main() refuses an output that is an input or another output before running."""
    p.set_defaults(reads=tuple(reads), writes=tuple(writes))


def _path_values(args: argparse.Namespace, names) -> dict:
    return {n: getattr(args, n.lstrip("-").replace("-", "_"), None) for n in names}


def _add_demo_data(sub):
    p = sub.add_parser("demo-data", help="write a synthetic chest CT data set (RadGenome or CTRG layout)")
    p.add_argument("--layout", choices=["radgenome", "ctrg"], default="radgenome")
    p.add_argument("--cases", type=int, default=12, help="number of scans (train and test together)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="nominal volume size in voxels (x y z); scans vary around it")
    p.add_argument("--report-style", choices=["varied", "fixed"], default="varied",
                   help="varied: several phrasings per statement drawn per scan, with measurements; fixed: one "
                        "phrasing per statement, no measurements (the workflow's demo; docs/evaluation.md)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=_call("reg2rg.demo.writers:cli"))
    _paths(p, writes=["--out"])


def _add_input_checks(p):
    """What to do with a scan that ingest would refuse (ingest, report)."""
    p.add_argument("--fill-nonfinite", type=float, metavar="HU",
                   help="replace NaN or infinite voxels by this HU value (e.g. -1024) instead of refusing the scan")
    p.add_argument("--accept-implausible-hu", action="store_true",
                   help="write the volume even when air is not near -1000 HU (a warning instead of an error)")


def _add_ingest(sub):
    p = sub.add_parser("ingest", help="read a CT (DICOM folder, NIfTI, NRRD, MHA) into canonical int16 HU NIfTI")
    p.add_argument("input", help="DICOM series folder or image file")
    p.add_argument("output", help="output .nii.gz; a JSON sidecar is written beside it")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=(1.0, 1.0, 3.0),
                   help="target spacing in mm (default 1 1 3)")
    p.add_argument("--metadata", help="CT-RATE v1 metadata CSV (slope, intercept, spacing per VolumeName)")
    p.add_argument("--already-hu", action="store_true",
                   help="the file is already in HU (CT-RATE v2 *_fixed): never rescale it again")
    p.add_argument("--series", help="DICOM series to read when a folder holds several: its SeriesInstanceUID or "
                                    "the #hash an error lists")
    p.add_argument("--resample-gaps", action="store_true",
                   help="accept missing DICOM slices and fill them by resampling instead of failing")
    _add_input_checks(p)
    p.add_argument("--source-root", help="data set root: the sidecar names the input by its path relative to it "
                                         "(without it: by the checksum of its files only)")
    p.set_defaults(run=_call("reg2rg.ingest:cli"))
    _paths(p, reads=["input", "--metadata"], writes=["output"])


def _add_bench(sub):
    p = sub.add_parser("bench", help="benchmarks, reported as ratios against a baseline measured in the same run")
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("ingest", help="seconds per volume of `reg2rg ingest` vs a plain read of the same file")
    b.add_argument("--out", help="write the results as JSON here")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"))
    _paths(b, writes=["--out"])
    b.set_defaults(run=_call("reg2rg.bench:cli_ingest"))
    b = bsub.add_parser("loader", help="samples/s of the training loader over the cache vs the authors' per-sample loading")
    b.add_argument("--out", help="write the results as JSON here")
    b.add_argument("--shape", type=int, nargs=3, default=(480, 480, 240), metavar=("X", "Y", "Z"),
                   help="synthetic scan size (default: RadGenome-like 480 480 240)")
    b.add_argument("--input-size", type=int, nargs=3, default=(256, 256, 64), metavar=("X", "Y", "Z"),
                   help="model input size (default: the paper's 256 256 64)")
    b.add_argument("--scans", type=int, default=1)
    b.add_argument("--repeats", type=int, default=3, help="passes over the scans with our loader")
    b.add_argument("--baseline-repeats", type=int, default=1,
                   help="passes over the scans with the authors' loader (about 1-2 min per CT-RATE-size sample)")
    b.add_argument("--threads", type=int, default=1, help="torch threads per loader process (a DataLoader worker: 1)")
    _paths(b, writes=["--out"])
    b.set_defaults(run=_call("reg2rg.bench:cli_loader"))
    b = bsub.add_parser("padding", help="tokens/s of a tiny-preset training step padded to the longest vs to 2048")
    b.add_argument("--out", help="write the results as JSON here")
    b.add_argument("--batch-size", type=int, default=3)
    b.add_argument("--steps", type=int, default=4)
    b.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    _paths(b, writes=["--out"])
    b.set_defaults(run=_call("reg2rg.bench:cli_padding"))
    b = bsub.add_parser("frozen", help="tiny-preset training step time with cached frozen-ViT features vs running the ViT")
    b.add_argument("--out", help="write the results as JSON here")
    b.add_argument("--batch-size", type=int, default=3)
    b.add_argument("--steps", type=int, default=4)
    b.add_argument("--paper-vit", action="store_true", help="RadFM's ViT (768 wide, 12 deep) instead of the tiny one")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    _paths(b, writes=["--out"])
    b.set_defaults(run=_call("reg2rg.bench:cli_frozen"))


def _add_label(sub):
    p = sub.add_parser("label", help="label report texts with the 18 CT-RATE abnormalities")
    p.add_argument("--input", required=True, help="CSV with a report text column")
    p.add_argument("--text-column", required=True)
    p.add_argument("--output", required=True, help="CSV: the input's id columns plus 18 label columns (0/1)")
    _add_labeler_options(p)
    p.set_defaults(run=_call("reg2rg.evaluate.labelers:cli"))
    _paths(p, reads=["--input", "--checkpoint", "--radbert"], writes=["--output"])


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="text metrics, clinical efficacy and region recognition of predictions")
    p.add_argument("--predictions", required=True, help="Parquet or CSV with case_id, reference, prediction")
    p.add_argument("--out", required=True, help="metrics.json")
    p.add_argument("--protocol", choices=["coco", "reg2rg", "all"], default="all")
    _add_labeler_options(p)
    p.add_argument("--meta", help="JSON object or file: dataset, model_preset, decoding, config_digest")
    p.set_defaults(run=_call("reg2rg.evaluate:cli"))
    _paths(p, reads=["--predictions", "--meta", "--checkpoint", "--radbert"], writes=["--out"])


def _add_split_reports(sub):
    p = sub.add_parser("split-reports", help="split whole reports into the 10 region texts (LLM or keyword rules)")
    p.add_argument("--input", required=True, help="CTRG annotation.json, or a CSV/Parquet with an id and a report column")
    p.add_argument("--output", required=True, help="region report table (Parquet, the reports stage's format)")
    p.add_argument("--splitter", choices=["rules", "llm"], default="rules")
    p.add_argument("--id-column", help="CSV/Parquet: the id column (default: case_id, id, AccessionNo)")
    p.add_argument("--text-column", help="CSV/Parquet: the report column (default: report, report_text)")
    p.add_argument("--base-url", help="llm: OpenAI-compatible endpoint (default $REG2RG_LLM_BASE_URL, "
                                      "else http://127.0.0.1:8000/v1)")
    p.add_argument("--model", help="llm: served model name (default $REG2RG_LLM_MODEL, else Qwen/Qwen2.5-14B-Instruct)")
    p.add_argument("--api-key-env", help="llm: environment variable holding the API key (default REG2RG_LLM_API_KEY)")
    p.add_argument("--concurrency", type=int, help="llm: requests in flight at most (default 8)")
    p.add_argument("--timeout", type=float, help="llm: seconds per request (default 120)")
    p.add_argument("--max-attempts", type=int, help="llm: attempts per report (default 4)")
    p.add_argument("--structured-output", choices=["response_format", "guided_json", "none"],
                   help="llm: how the JSON schema is sent (default response_format)")
    p.add_argument("--cache", help="llm: cache folder (a rerun asks nothing already answered)")
    p.add_argument("--no-retry-failed", action="store_true", help="llm: keep cached failures instead of asking again")
    p.add_argument("--failures", help="write failed reports (reason, raw answer) to this CSV or Parquet")
    p.add_argument("--fail-on-error", action="store_true", help="exit with status 1 when any report failed")
    p.add_argument("--serve-model", help="llm: start `vllm serve` on this local model folder for the run")
    p.add_argument("--serve-port", type=int, default=8000)
    p.add_argument("--serve-log", help="llm: where the managed server's output goes")
    p.set_defaults(run=_call("reg2rg.split.table:cli"))
    _paths(p, reads=["--input", "--serve-model"], writes=["--output", "--failures", "--serve-log"])


def _add_generate(sub):
    p = sub.add_parser("generate", help="generate reports for a manifest's scans with a trained Reg2RG model")
    p.add_argument("--model", required=True, help="trained model folder (results/{dataset}/model)")
    p.add_argument("--manifest", required=True, help="manifest Parquet (results/{dataset}/manifest/test.parquet)")
    p.add_argument("--out", required=True, help="predictions Parquet to write")
    p.add_argument("--cache", help="the cache stage's folder (default: cache/ beside the manifest's folder)")
    p.add_argument("--dataset", help="data set name recorded in the output (default: the model's)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--limit", type=int, help="only the first N scans")
    p.add_argument("--batch-size", type=int, help="scans per generate call (default 4)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers reading the cache (default 0)")
    p.add_argument("--decoding", choices=["greedy", "authors"],
                   help="named decoding settings (default greedy; authors: the Reg2RG authors' sampling, "
                        "temperature 0.6, top-p 0.9, top-k 30, 500 new tokens); the options below override them")
    _add_decoding_options(p)
    p.add_argument("--seed", type=int, help="seed of sampling and of --shuffle-regions (default 0)")
    p.add_argument("--shuffle-regions", action=argparse.BooleanOptionalAction, default=None,
                   help="prompt the regions in a seeded random order (default: REGIONS order)")
    p.set_defaults(run=_call("reg2rg.generate:cli"))
    _paths(p, reads=["--model", "--manifest", "--cache"], writes=["--out"])


def _add_report(sub):
    p = sub.add_parser("report", help="a region-grounded report (JSON, optional HTML page) for one new scan")
    p.add_argument("--model", required=True, help="trained model folder (results/{dataset}/model)")
    p.add_argument("--ct", required=True, help="the scan: DICOM series folder, NIfTI, NRRD or MHA")
    p.add_argument("--masks", help="folder with one {region}.nii.gz per region, or a reg2rg uint16 label file")
    p.add_argument("--segmenter", choices=["sat"], help="segment the scan instead of --masks (needs SAT configured)")
    p.add_argument("--sat-config", help="with --segmenter sat: YAML with the keys of datasets.<name>.segmentation.sat "
                                        "(repo, checkpoint, text_encoder_checkpoint, ...; optionally prompts, "
                                        "pleura_margin_mm)")
    p.add_argument("--out", required=True, help="report JSON to write")
    p.add_argument("--html", help="also write this self-contained HTML page")
    p.add_argument("--series", help="DICOM series when the folder holds several: its SeriesInstanceUID or #hash")
    _add_input_checks(p)
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    _add_decoding_options(p)
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.set_defaults(run=_call("reg2rg.scan_report:cli"))
    _paths(p, reads=["--model", "--ct", "--masks", "--sat-config"], writes=["--out", "--html"])


def _add_check_weights(sub):
    p = sub.add_parser("check-weights", help="check the pretrained files a model preset names (keys, shapes) "
                                             "against the model code, before submitting a job")
    p.add_argument("config", help="the workflow config (config/config.yaml)")
    p.add_argument("--preset", help="model preset to check (default: the data set's model_preset)")
    p.add_argument("--dataset", help="data set whose model_preset to check (default: default_dataset)")
    p.set_defaults(run=_call("reg2rg.weights:cli"))


COMMANDS = [_add_demo_data, _add_ingest, _add_bench, _add_label, _add_evaluate, _add_split_reports, _add_generate,
            _add_report, _add_check_weights]


def build_parser() -> argparse.ArgumentParser:
    from reg2rg import __version__

    parser = argparse.ArgumentParser(prog="reg2rg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"reg2rg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from reg2rg.errors import Reg2RGError

    from reg2rg.files import refuse_overwrite

    try:
        refuse_overwrite(_path_values(args, getattr(args, "reads", ())),
                         _path_values(args, getattr(args, "writes", ())))
        result = args.run(args)
    except Reg2RGError as err:
        logging.getLogger("reg2rg").error("%s", err)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
