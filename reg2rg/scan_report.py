"""One scan, one command: `reg2rg report --model DIR --ct PATH --masks DIR --out report.json [--html page.html]`.

The scan goes through the training path, in a temporary folder: reg2rg.ingest (DICOM folder, NIfTI, NRRD,
MHA -> canonical int16 HU), reg2rg.masks.import_region_masks (masks placed on that grid in physical space),
reg2rg.cache.cache_scan at the model's input size, reg2rg.dataset.Reg2RGDataset (test mode) and
reg2rg.generate.generate_predictions with explicit decoding settings (greedy by default).

Masks (`--masks`), either
- a folder with one file per region named like RadGenome's `{region}.nii.gz` (also `.nii`, `.nrrd`, `.mha`;
  e.g. `lung.nii.gz`, `trachea and bronchie.nii.gz`); any grid: placed in physical space; or
- a reg2rg uint16 label file (bit i <=> REGIONS[i], the masks stage's format), given as the file or as a
  folder holding only it. It must declare itself (the header note the masks stage writes, or its sidecar):
  a binary mask, a misnamed region file or another tool's label map is refused, naming the file.
`--segmenter sat` runs SAT on the scan (reg2rg.segment.sat.run_sat_case) with the settings of `--sat-config FILE`;
without them it is a ConfigError.

The JSON (schema: reg2rg/schemas/report.schema.json) holds, per prompted region, its index, the area of its
mask, the area the model named, whether they agree, flags and the text; a region whose named area differs
from its mask (or that got no text) is `grounded: false`. No path or DICOM header value is written: the
scan is named by its input checksum.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from reg2rg.constants import REGIONS, region_index
from reg2rg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MASK_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


def report_schema() -> dict:
    from importlib import resources

    return json.loads(resources.files("reg2rg").joinpath("schemas/report.schema.json").read_text())


def validate_report(report: dict) -> None:
    import jsonschema

    try:
        jsonschema.validate(report, report_schema())
    except jsonschema.ValidationError as err:
        raise ValueError(f"report does not match report.schema.json at {list(err.absolute_path)}: "
                         f"{err.message}") from err


# ------------------------------------------------------------------------------------------ inputs
def load_model(model_dir, device=None):
    """reg2rg.model.load_trained, with an InputError naming the folder when it is not a reg2rg model."""
    from reg2rg.model.build import CONFIG_FILE, MODULES_FILE

    path = Path(model_dir)
    if not path.is_dir():
        raise InputError(path, "model folder not found")
    missing = [n for n in (CONFIG_FILE, MODULES_FILE, "adapter", "tokenizer") if not (path / n).exists()]
    if missing:
        raise InputError(path, f"not a reg2rg model folder (no {', '.join(missing)}): train one with "
                               "`accelerate launch -m reg2rg.train` or point to results/{dataset}/model")
    from reg2rg.model import load_trained

    try:
        return load_trained(path, device=device)
    except InputError:
        raise
    except Exception as err:  # transformers/peft/safetensors raise many kinds
        raise InputError(path, f"cannot load the reg2rg model: {type(err).__name__}: {err}") from err


def _region_files(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """({region: file}, other image files) of a masks folder."""
    found, other = {}, []
    for entry in sorted(folder.iterdir()):
        ext = next((e for e in MASK_EXTENSIONS if entry.name.lower().endswith(e)), None)
        if ext is None or not entry.is_file():
            continue
        try:
            found.setdefault(REGIONS[region_index(entry.name[: -len(ext)])], entry)
        except ValueError:
            other.append(entry)
    return found, other


def _label_to_region_files(label_path: Path, work: Path) -> dict[str, Path]:
    """Split a reg2rg uint16 label file into one file per region (same grid). A file that does not declare
    itself a reg2rg label file (a binary mask, a misnamed region file, another tool's label map) is refused
    (reg2rg.masks.read_label_file)."""
    import numpy as np
    import SimpleITK as sitk

    from reg2rg.masks import read_label_file, unpack_label_map

    arr, img = read_label_file(label_path)
    masks = unpack_label_map(arr)
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, r in enumerate(REGIONS):
        if masks[i].any():
            out = sitk.GetImageFromArray(masks[i].astype(np.uint8))
            out.CopyInformation(img)
            files[r] = work / f"{r}.nii.gz"
            sitk.WriteImage(out, str(files[r]), useCompression=True)
    return files


def place_masks(volume_path, masks, out_path, work) -> dict:
    """Bring `masks` (see the module docstring) onto the ingested volume's grid: the masks stage's uint16 label
    file at `out_path`; returns its sidecar. InputError when there is no usable region."""
    from reg2rg.masks import STATUS_PRESENT, import_region_masks

    src = Path(masks)
    if not src.exists():
        raise InputError(src, "masks not found")
    if src.is_dir():
        files, other = _region_files(src)
        if not files:
            if len(other) != 1:
                raise InputError(src, "no usable masks: expected one file per region named {region}.nii.gz "
                                      f"(regions: {', '.join(REGIONS)}) or a single reg2rg label file; found "
                                      f"{len(other)} other image file(s)")
            files = _label_to_region_files(other[0], Path(work) / "label_regions")
    else:
        files = _label_to_region_files(src, Path(work) / "label_regions")
    side = import_region_masks(volume_path, files, out_path)
    if not any(side["status"][r] == STATUS_PRESENT for r in REGIONS):
        raise InputError(src, "no usable masks: " + ", ".join(
            f"{r} {side['status'][r]}" for r in REGIONS if side["status"][r] != "missing") or "no region file")
    return side


def load_sat_config(path) -> dict:
    """SAT settings from a YAML file with the keys of `datasets.<name>.segmentation.sat` in config/config.yaml
    (repo, checkpoint, text_encoder_checkpoint, vision_backbone, ...; optionally `prompts` and
    `pleura_margin_mm`, as in `segmentation`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "SAT config not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping with the keys of segmentation.sat (repo, checkpoint, ...)")
    return data


def segment_with_sat(volume_path, out_path, work, sat_settings: dict | None = None) -> dict:
    """Masks from SAT for one scan (reg2rg.segment.sat.run_sat_case) with `sat_settings` (--sat-config)."""
    try:
        from reg2rg.segment import sat
    except ImportError as err:
        raise ConfigError(f"--segmenter sat: reg2rg.segment is not available ({err}); give --masks") from err
    if not sat_settings:
        raise ConfigError("--segmenter sat: SAT must be configured: give --sat-config FILE (YAML with the keys of "
                          "segmentation.sat: repo, checkpoint, text_encoder_checkpoint, ...), or give --masks DIR")
    return sat.run_sat_case(volume_path, out_path, Path(work) / "sat", sat_settings)


# ------------------------------------------------------------------------------------------ report
def build_report(row: dict, mask_side: dict, case: dict, model_info: dict, decoding: dict) -> dict:
    """The report dict (schema report.schema.json) from one generate_predictions row."""
    from reg2rg import __version__

    parsed: dict[int, dict] = {}
    for p in row["regions"]:
        parsed.setdefault(int(p["index"]), p)
    regions = []
    for k, area in enumerate(row["region_areas"]):
        p = parsed.get(k + 1)
        named = p["named_area"] if p else None
        text = (p["text"] or "").strip() if p else None
        flags = []
        if p is None:
            flags.append("not_generated")
        else:
            if named != area:
                flags.append("area_mismatch")
            if not text:
                flags.append("empty_text")
        regions.append({"index": k + 1, "mask_area": area, "named_area": named, "agrees": named == area,
                        "grounded": not flags, "flags": flags, "text": text,
                        "mask_voxels": int(mask_side["voxels"][area])})
    unprompted = [{"index": i, "named_area": p["named_area"], "text": p["text"]}
                  for i, p in sorted(parsed.items()) if not 1 <= i <= len(regions)]
    return {
        "format_version": FORMAT_VERSION,
        "case": case,
        "model": model_info,
        "decoding": decoding,
        "report": row["prediction"],
        "regions": regions,
        "unprompted": unprompted,
        "summary": {"regions": len(regions), "grounded": sum(r["grounded"] for r in regions),
                    "not_grounded": [r["index"] for r in regions if not r["grounded"]],
                    "finished": bool(row["finished"]), "generated_tokens": int(row["generated_tokens"])},
        "masks": {r: mask_side["status"][r] for r in REGIONS},
        "reg2rg_version": __version__,
    }


def _write_atomic(path: Path, text: str) -> None:
    from reg2rg.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def make_report(model_dir, ct, out, *, masks=None, segmenter: str | None = None, html=None, settings=None,
                device=None, work_dir=None, series_uid=None, sat_settings: dict | None = None,
                fill_nonfinite=None, accept_implausible_hu: bool = False) -> dict:
    """Generate the grounded report of one scan and write `out` (JSON) and `html` (optional page). Returns
    the report dict. See the module docstring."""
    import pandas as pd
    import torch

    from reg2rg.cache import cache_scan
    from reg2rg.dataset import Reg2RGDataset
    from reg2rg.generate import GenerationSettings, _run_config, generate_predictions
    from reg2rg.ingest import ingest

    if (masks is None) == (segmenter is None):
        raise ConfigError("give exactly one of --masks DIR and --segmenter sat")
    if segmenter not in (None, "sat"):
        raise ConfigError(f"--segmenter: unknown segmenter {segmenter!r} (known: sat)")
    settings = settings or GenerationSettings(batch_size=1)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_dir, device=device)  # fail early, before the slow steps
    run = _run_config(Path(model_dir))
    out = Path(out)

    with tempfile.TemporaryDirectory(prefix="reg2rg-report-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        vol_side = ingest(ct, tmp / "scan.nii.gz", series_uid=series_uid, fill_nonfinite=fill_nonfinite,
                          accept_implausible_hu=accept_implausible_hu)
        sha = vol_side["source"]["sha256"]
        case_id = f"scan-{sha[:12]}"
        volume = tmp / f"{case_id}.nii.gz"
        os.replace(tmp / "scan.nii.gz", volume)
        mask_path = tmp / f"{case_id}.masks.nii.gz"
        if masks is not None:
            mask_side = place_masks(volume, masks, mask_path, tmp)
        else:
            mask_side = segment_with_sat(volume, mask_path, tmp, sat_settings)
        (tmp / "cache").mkdir()
        try:
            cache_scan(volume, mask_path, tmp / "cache" / f"{case_id}.safetensors",
                       input_size=model.config.input_size)
        except InputError as err:  # name the user's masks, not our temp file
            raise InputError(masks or ct, f"no usable masks: {err.problem}") from err
        manifest = pd.DataFrame([{"case_id": case_id, "split": "test", "status": "included",
                                  "region_texts": [None] * len(REGIONS), "regions_usable": [], "report": None}])
        dataset = Reg2RGDataset(manifest, tmp / "cache", model.config.input_size, text=False,
                                lfd=model.config.use_lfd)
        if len(dataset) == 0:
            raise InputError(masks or ct, "no usable masks: no region mask has a voxel inside the body")
        row = generate_predictions(model, dataset, settings, device=device, progress=False).iloc[0].to_dict()
        out_geom = vol_side["output"]
        case = {"name": case_id, "input_sha256": sha, "input_format": vol_side["source"]["format"],
                "size": [int(v) for v in out_geom["size"]], "spacing": [float(v) for v in out_geom["spacing"]]}
        model_info = {"name": Path(model_dir).resolve().name, "preset": run.get("preset"),
                      "dataset": run.get("dataset"), "config_digest": run.get("config_digest"),
                      "input_size": [int(v) for v in model.config.input_size]}
        report = build_report(row, mask_side, case, model_info, settings.decoding())
        validate_report(report)
        _write_atomic(out, json.dumps(report, indent=2) + "\n")
        if html is not None:
            from reg2rg.viewer import case_slices, read_scan, report_html

            hu, mask_arr, spacing = read_scan(volume, mask_path)
            idx = [REGIONS.index(r["mask_area"]) for r in report["regions"]]
            _write_atomic(Path(html), report_html(report, case_slices(hu, mask_arr, spacing, idx)))
    bad = report["summary"]["not_grounded"]
    log.info("wrote %s%s: %d regions, %d not grounded%s", out, f" and {html}" if html else "",
             len(report["regions"]), len(bad), f" (regions {bad})" if bad else "")
    return report


def cli(args) -> int:
    """`reg2rg report` (arguments: reg2rg.cli._add_report)."""
    from reg2rg.generate import GenerationSettings

    overrides = {k: getattr(args, k, None) for k in ("max_new_tokens", "do_sample", "num_beams", "temperature",
                                                     "top_k", "top_p", "repetition_penalty", "seed")}
    settings = GenerationSettings.from_dict({"batch_size": 1}, **overrides)
    sat_config = getattr(args, "sat_config", None)
    make_report(args.model, args.ct, args.out, masks=args.masks, segmenter=args.segmenter, html=args.html,
                settings=settings, device=args.device, series_uid=args.series,
                fill_nonfinite=args.fill_nonfinite, accept_implausible_hu=args.accept_implausible_hu,
                sat_settings=load_sat_config(sat_config) if sat_config else None)
    return 0
