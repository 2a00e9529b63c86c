"""Evaluation of generated reports: text metrics (coco and reg2rg protocols), clinical efficacy (18 CT-RATE
labels), region recognition, report lengths; written as metrics.json (schema:
reg2rg/schemas/metrics.schema.json) with a length plot beside it.

Input: a predictions table (Parquet or CSV), one row per scan: ``case_id``, ``reference``, ``prediction``
(whole reports, RRA form "The region 3 is heart: ..." or plain); optional ``region_areas`` (list of area
names by region index, position 0 = region 1; in CSV a JSON list) and the metadata columns ``dataset``,
``model_preset``, ``config_digest``, ``decoding`` (JSON object). See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import logging
import platform
import subprocess
from importlib import metadata as _md
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reg2rg.constants import REGIONS
from reg2rg.errors import InputError, check_unique_ids
from reg2rg.rra import parse_rra, strip_rra

log = logging.getLogger(__name__)

PROTOCOLS = ("coco", "reg2rg")
LENGTH_PLOT = "report_lengths.png"
SCHEMA_VERSION = 2  # 2: n_scored and excluded (empty references left out of every metric)
REQUIRED_COLUMNS = ("case_id", "reference", "prediction")
META_KEYS = ("dataset", "model_preset", "decoding", "config_digest")
_PACKAGES = ("numpy", "pandas", "scipy", "sacrebleu", "rouge-score", "nltk", "pycocoevalcap", "matplotlib",
             "jsonschema", "torch", "transformers")


# ---------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------
def _parse_areas(value) -> list | None:
    """region_areas cell -> list of area names (None entries kept) or None."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ValueError(f"region_areas {text[:60]!r} is not a JSON list") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"region_areas must be a list, got {type(value).__name__}")
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in value]


def load_predictions(path: str | Path):
    """Read a predictions table (Parquet or CSV) and check its columns; InputError names what is wrong."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "predictions file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={"case_id": str}, keep_default_na=False, na_values=[""])
    except Exception as err:  # noqa: BLE001 - any reader failure is a malformed input file
        raise InputError(path, f"cannot read predictions table: {err}") from err
    check_predictions(df, path)
    return df


def check_predictions(df, path: str | Path = "<predictions>") -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {missing}; need {list(REQUIRED_COLUMNS)}, found {list(df.columns)}")
    if len(df) == 0:
        raise InputError(path, "no rows")
    check_unique_ids(df["case_id"], path)
    if "region_areas" in df.columns:
        for cid, v in zip(df["case_id"], df["region_areas"]):
            try:
                _parse_areas(v)
            except ValueError as err:
                raise InputError(path, f"case {cid}: {err}") from None


def _texts(series) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in series]


# ---------------------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------------------
def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def software_versions() -> dict:
    from reg2rg import __version__

    pkgs = {}
    for name in _PACKAGES:
        try:
            pkgs[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pkgs[name] = None
    return {"reg2rg": __version__, "python": platform.python_version(), "packages": pkgs,
            "git_commit": _git_commit()}


def _meta_from(df, meta: dict | None) -> dict:
    out = dict.fromkeys(META_KEYS)
    for k in META_KEYS:
        if k in df.columns:
            vals = {json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else v
                    for v in df[k].dropna().tolist()}
            if len(vals) == 1:
                out[k] = df[k].dropna().iloc[0]
            elif len(vals) > 1:
                log.warning("column %s holds %d different values; not recorded", k, len(vals))
    for k, v in (meta or {}).items():
        if k in META_KEYS and v is not None:
            out[k] = v
    dec = out["decoding"]
    if isinstance(dec, str):
        try:
            dec = json.loads(dec)
        except json.JSONDecodeError:
            dec = {"description": dec}
    if isinstance(dec, np.ndarray):
        dec = dec.tolist()
    out["decoding"] = dec
    for k in ("dataset", "model_preset", "config_digest"):
        out[k] = None if out[k] is None else str(out[k])
    return out


# ---------------------------------------------------------------------------------------------------------
# Region texts
# ---------------------------------------------------------------------------------------------------------
def _region_texts(references: Sequence[str], predictions: Sequence[str], region_areas: Sequence[list | None]):
    """(true area, reference text, predicted text) of every true region index of the scans whose reference
    is in RRA form; the area is the index's true area (mask, else reference prefix); "" where a side has no
    text for the index (a plain prediction has none for any)."""
    from reg2rg.evaluate.recognition import true_areas

    for ref, pred, areas in zip(references, predictions, region_areas):
        ref_parts = parse_rra(ref)
        if not ref_parts:
            continue
        ref_by, pred_by = {}, {}
        for p in ref_parts:
            ref_by.setdefault(p.index, p.text)
        for p in parse_rra(pred):
            pred_by.setdefault(p.index, p.text)
        for idx, area in true_areas(ref, areas).items():
            yield area, ref_by.get(idx, "").strip(), pred_by.get(idx, "").strip()


def region_text_groups(references: Sequence[str], predictions: Sequence[str],
                       region_areas: Sequence[list | None]) -> dict[str, tuple[list[str], list[str]]]:
    """Area -> (predicted texts, reference texts) of the region indices where both reports are in RRA form
    and both have text for that index; the area is the index's true area (mask, else reference prefix)."""
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for area, r, g in _region_texts(references, predictions, region_areas):
        if r and g:
            preds, refs = groups.setdefault(area, ([], []))
            preds.append(g)
            refs.append(r)
    order = {a: i for i, a in enumerate(REGIONS)}
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def region_text_exclusions(references: Sequence[str], predictions: Sequence[str],
                           region_areas: Sequence[list | None]) -> dict[str, int]:
    """How many true region indices the per-region text metrics leave out, and why: no reference text for
    the index (`empty_reference`), else no predicted text for it (`empty_prediction`)."""
    out = {"empty_reference": 0, "empty_prediction": 0}
    for _, r, g in _region_texts(references, predictions, region_areas):
        if not r:
            out["empty_reference"] += 1
        elif not g:
            out["empty_prediction"] += 1
    return out


def empty_references(references: Sequence[str]) -> list[int]:
    """Positions of the references with no text once RRA prefixes are removed (None, blank, prefixes only)."""
    return [i for i, r in enumerate(references) if not strip_rra(r or "").strip()]


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------
def _protocols(protocol: str) -> tuple[str, ...]:
    if protocol == "all":
        return PROTOCOLS
    if protocol not in PROTOCOLS:
        from reg2rg.errors import ConfigError

        raise ConfigError(f"unknown protocol {protocol!r}; choose coco, reg2rg or all")
    return (protocol,)


def _coco_section(whole, regions) -> dict:
    from reg2rg.evaluate.text_metrics import CocoScorer, java_available

    reason = java_available()
    if reason:
        log.warning("coco protocol unavailable: %s", reason)
        return {"available": False, "reason": reason, "whole_report": None, "per_region": {}}
    groups = {"__whole__": whole, **{f"region:{a}": v for a, v in regions.items()}}
    with CocoScorer() as scorer:
        res = scorer.score(groups)
    return {"available": True, "reason": None, "whole_report": res["__whole__"],
            "per_region": {a: res[f"region:{a}"] for a in regions}}


def _reg2rg_section(whole, regions) -> dict:
    from reg2rg.evaluate.text_metrics import load_wordnet, reg2rg_protocol

    wn = load_wordnet()
    out = {"wordnet": wn.path if wn.reader is not None else None,
           "whole_report": reg2rg_protocol(whole[0], whole[1])}
    out["per_region"] = {a: reg2rg_protocol(p, r) for a, (p, r) in regions.items()}
    return out


def evaluate_predictions(df, protocol: str = "all", labeler=None, out_dir: str | Path | None = None,
                         meta: dict | None = None) -> dict:
    """All metrics of a predictions table as the metrics.json dict (validated against its schema).

    ``labeler``: None (the rules labeler), a name ("rules"), or an object with ``label(texts)`` (see
    reg2rg.evaluate.labelers). ``out_dir``: where the length plot (report_lengths.png) is written; None
    writes no plot. ``meta``: dataset, model_preset, decoding, config_digest (override same-named columns).
    """
    from reg2rg.evaluate.labelers import LABELS, chance_micro_f1, get_labeler, label_agreement
    from reg2rg.evaluate.plots import length_distributions, plot_lengths, word_lengths
    from reg2rg.evaluate.recognition import recognition_metrics, region_pairs

    source_file = (meta or {}).get("predictions_file") or "<predictions>"
    check_predictions(df, source_file)
    protocols = _protocols(protocol)
    case_ids = [str(c) for c in df["case_id"]]
    refs_raw, preds_raw = _texts(df["reference"]), _texts(df["prediction"])
    areas = ([_parse_areas(v) for v in df["region_areas"]] if "region_areas" in df.columns
             else [None] * len(df))
    # One rule for every metric: a scan whose reference has no text is scored by none of them.
    empty = set(empty_references(refs_raw))
    if len(empty) == len(df):
        raise InputError(source_file, f"every reference is empty ({len(df)} scans): nothing to score")
    if empty:
        log.warning("%d scans with an empty reference are left out of every metric: %s", len(empty),
                    ", ".join(case_ids[i] for i in sorted(empty)[:10]))
    excluded_ids = [case_ids[i] for i in sorted(empty)]
    keep = [i for i in range(len(df)) if i not in empty]
    case_ids, refs_raw, preds_raw, areas = ([v[i] for i in keep] for v in (case_ids, refs_raw, preds_raw, areas))
    refs, preds = [strip_rra(t) for t in refs_raw], [strip_rra(t) for t in preds_raw]
    regions = region_text_groups(refs_raw, preds_raw, areas)

    text: dict[str, Any] = {}
    if "coco" in protocols:
        log.info("coco protocol on %d scans, %d region groups", len(df), len(regions))
        text["coco"] = _coco_section((preds, refs), regions)
    if "reg2rg" in protocols:
        log.info("reg2rg protocol on %d scans", len(df))
        text["reg2rg"] = _reg2rg_section((preds, refs), regions)

    if labeler is None or isinstance(labeler, str):
        labeler = get_labeler(labeler)
    y_ref, y_gen = labeler.label(refs), labeler.label(preds)
    ce = label_agreement(y_ref, y_gen)
    ce["chance_micro_f1"] = chance_micro_f1(y_ref)
    ce["labeler"] = labeler.describe() if hasattr(labeler, "describe") else {"name": getattr(labeler, "name", None)}
    ce["positives_reference"] = dict(zip(LABELS, map(int, y_ref.sum(axis=0))))
    ce["positives_generated"] = dict(zip(LABELS, map(int, y_gen.sum(axis=0))))

    pairs = region_pairs(case_ids, refs_raw, preds_raw, areas)
    from_masks = {p.case_id for p in pairs} & {c for c, a in zip(case_ids, areas) if a}
    from_refs = {p.case_id for p in pairs} - from_masks
    source = ("mixed" if from_masks and from_refs else "region_areas" if from_masks
              else "reference" if from_refs else None)
    rec = recognition_metrics(pairs, source=source)
    excluded = {
        "empty_reference": len(excluded_ids),
        "case_ids": {"empty_reference": excluded_ids},
        "region_text": region_text_exclusions(refs_raw, preds_raw, areas),
        "region_recognition": {"no_true_area": len(case_ids) - rec["n_scans"]},
    }

    lengths = length_distributions(word_lengths(refs), word_lengths(preds))
    lengths["plot"] = None
    if out_dir is not None:
        plot_lengths(lengths, Path(out_dir) / LENGTH_PLOT)
        lengths["plot"] = LENGTH_PLOT

    m = _meta_from(df, meta)
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": m["dataset"],
        "n_scans": int(len(df)),
        "n_scored": len(case_ids),
        "excluded": excluded,
        "model_preset": m["model_preset"],
        "decoding": m["decoding"],
        "config_digest": m["config_digest"],
        "predictions_file": (meta or {}).get("predictions_file"),
        "protocols": list(protocols),
        "software": software_versions(),
        "text": text,
        "clinical_efficacy": ce,
        "region_recognition": rec,
        "lengths": lengths,
    }
    metrics = _nan_to_none(json.loads(json.dumps(metrics, default=_json_default)))
    validate_metrics(metrics)
    return metrics


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _nan_to_none(o):
    if isinstance(o, float) and (np.isnan(o) or np.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_nan_to_none(v) for v in o]
    return o


def metrics_schema() -> dict:
    path = Path(__file__).resolve().parent.parent / "schemas" / "metrics.schema.json"
    return json.loads(path.read_text())


def validate_metrics(metrics: dict) -> None:
    """Raise jsonschema.ValidationError when ``metrics`` does not follow metrics.schema.json."""
    import jsonschema

    jsonschema.Draft202012Validator(metrics_schema()).validate(metrics)


def write_metrics(metrics: dict, path: str | Path) -> Path:
    """Validate, then write metrics.json (NaN written as null)."""
    metrics = _nan_to_none(metrics)
    validate_metrics(metrics)
    from reg2rg.files import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, metrics, allow_nan=False)


def cli(args: argparse.Namespace) -> int:
    """`reg2rg evaluate`."""
    from reg2rg.evaluate.labelers import get_labeler

    df = load_predictions(args.predictions)
    meta = {}
    if getattr(args, "meta", None):
        raw = args.meta
        try:
            meta = json.loads(Path(raw).read_text()) if Path(raw).is_file() else json.loads(raw)
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(raw, f"--meta is neither a JSON file nor a JSON object: {err}") from err
        if not isinstance(meta, dict):
            raise InputError(raw, "--meta must hold a JSON object")
    meta["predictions_file"] = str(args.predictions)
    labeler = get_labeler(args.labeler, getattr(args, "checkpoint", None), getattr(args, "radbert", None),
                          lowercase=getattr(args, "radbert_lowercase", None))
    out = Path(args.out)
    metrics = evaluate_predictions(df, protocol=args.protocol, labeler=labeler, out_dir=out.parent, meta=meta)
    write_metrics(metrics, out)
    log.info("wrote %s (%d scans)", out, metrics["n_scans"])
    return 0
