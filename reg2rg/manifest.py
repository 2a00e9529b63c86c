"""Manifests: one Parquet file per split, one row per input scan, validated against a JSON schema.

A scan is `included` when it was ingested, has at least one region with both a mask and a text, and its
report names no unknown region; otherwise it is `excluded` with the reason. Problems that do not exclude a
scan (a report joined from its region rows, a mask placed from another grid...) are kept in `notes`. Every scan of the inventory appears.
"""
from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

from reg2rg.constants import REGIONS
from reg2rg.region_reports import PROBLEM_UNKNOWN_REGION

log = logging.getLogger(__name__)


def manifest_schema() -> dict:
    return json.loads(resources.files("reg2rg").joinpath("schemas/manifest.schema.json").read_text())


def _status_map(status_df) -> dict[str, str]:
    """case_id -> '' when ok, else the reason."""
    return {r.case_id: ("" if r.status == "ok" else r.reason) for r in status_df.itertuples()}


def _ingest_notes(sidecar: dict) -> list[str]:
    """What ingestion let through that it refuses by default (datasets.<name>.ingest in the config)."""
    notes = [f"ingest: {st['voxels']} non-finite voxels set to {st['hu']:g} HU (fill_nonfinite)"
             for st in sidecar.get("steps") or [] if st.get("step") == "fill_nonfinite"]
    hu = sidecar.get("hu_check") or {}
    if hu and not hu.get("plausible", True):
        notes.append(f"ingest: air {hu.get('air_hu')} HU is not plausible CT in HU, accepted (accept_implausible_hu)")
    return notes


def _manifest_row(inv, ingest_reason, mask_reason, volumes_dir: Path, masks_dir: Path, report, labels):
    reasons = []
    row = {
        "case_id": inv.case_id, "split": inv.split, "source_split": inv.source_split, "image": inv.image,
        "volume": None, "mask": None, "size": None, "spacing": None, "origin": None, "direction": None,
        "intensity_mode": inv.intensity_mode, "region_status": ["unknown"] * len(REGIONS),
        "region_texts": [None] * len(REGIONS), "regions_usable": [], "report": None, "labels": labels, "notes": [],
    }
    if ingest_reason is None:
        reasons.append("not ingested: no ingest status for this scan")
    elif ingest_reason:
        reasons.append(f"ingest failed: {ingest_reason}")
    else:
        sidecar = json.loads((volumes_dir / f"{inv.case_id}.json").read_text())
        side = sidecar["output"]
        row.update(volume=str(volumes_dir / f"{inv.case_id}.nii.gz"), size=[int(v) for v in side["size"]],
                   spacing=[float(v) for v in side["spacing"]], origin=[float(v) for v in side["origin"]],
                   direction=[float(v) for v in side["direction"]])
        row["notes"] += _ingest_notes(sidecar)
        if mask_reason is None:
            reasons.append("no mask status for this scan")
        elif mask_reason:
            reasons.append(f"masks failed: {mask_reason}")
        else:
            side = json.loads((masks_dir / f"{inv.case_id}.json").read_text())
            row["mask"] = str(masks_dir / f"{inv.case_id}.nii.gz")
            row["region_status"] = [side["status"][r] for r in REGIONS]
            row["notes"] += [f"mask {r}: {n}" for r, n in (side.get("notes") or {}).items()
                             if n and side["status"][r] not in ("present", "missing", "empty")]
            if not any(s == "present" for s in row["region_status"]):
                reasons.append("no usable region mask: " + ", ".join(
                    f"{r} {s}" for r, s in zip(REGIONS, row["region_status"])))
    if report is None:
        reasons.append("no report for this scan")
    else:
        row["report"] = report["report"]
        row["region_texts"] = [None if t is None else str(t) for t in report["region_texts"]]
        blocking = [p for p in report["problems"] if PROBLEM_UNKNOWN_REGION in p]
        if blocking:
            reasons.append("report: " + "; ".join(blocking))
        row["notes"] += [f"report: {p}" for p in report["problems"] if p not in blocking]
    row["regions_usable"] = [r for r, s, t in zip(REGIONS, row["region_status"], row["region_texts"])
                             if s == "present" and t]
    if not reasons and not row["regions_usable"]:
        reasons.append("no region has both a non-empty mask and a text")
    row["status"] = "excluded" if reasons else "included"
    row["reason"] = "; ".join(reasons)
    return row


def build_manifest(inventory, ingest_status, mask_status, reports, labels, volumes_dir, masks_dir):
    """Join the stages' outputs into one table with a row per inventory scan (see the schema)."""
    import pandas as pd

    ingest = _status_map(ingest_status)
    masks = _status_map(mask_status)
    report_by_case = {r["case_id"]: r for r in reports.to_dict("records")}
    label_by_case = {} if labels is None else dict(zip(labels.case_id, labels["labels"]))
    rows = [
        _manifest_row(inv, ingest.get(inv.case_id), masks.get(inv.case_id), Path(volumes_dir), Path(masks_dir),
                      report_by_case.get(inv.case_id),
                      None if label_by_case.get(inv.case_id) is None else list(label_by_case[inv.case_id]))
        for inv in inventory.itertuples()
    ]
    manifest = pd.DataFrame(rows, columns=list(manifest_schema()["required"]))
    validate_manifest(manifest)
    known = set(inventory.case_id)
    orphans = sorted(set(report_by_case) - known)
    if orphans:
        log.warning("%d report rows have no scan (first: %s); they are not in the manifest",
                    len(orphans), ", ".join(orphans[:5]))
    excl = manifest[manifest.status == "excluded"]
    log.info("manifest: %d scans, %d included, %d excluded", len(manifest), len(manifest) - len(excl), len(excl))
    for r in excl.itertuples():
        log.info("excluded %s: %s", r.case_id, r.reason)
    return manifest


def _plain(value):
    """numpy/pyarrow values -> JSON types, for schema validation."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or (isinstance(value, float) and value != value):  # pandas' missing string values
        return None
    return value


def validate_manifest(manifest, source: str = "manifest") -> None:
    """Raise InputError naming the first bad row and field if any row breaks the schema."""
    import jsonschema

    from reg2rg.errors import InputError

    validator = jsonschema.Draft202012Validator(manifest_schema())
    for i, rec in enumerate(manifest.to_dict("records")):
        err = jsonschema.exceptions.best_match(validator.iter_errors({k: _plain(v) for k, v in rec.items()}))
        if err is not None:
            field = "/".join(map(str, err.absolute_path)) or "(row)"
            raise InputError(source, f"row {i} ({rec.get('case_id')}): field {field}: {err.message}")


def write_manifests(manifest, out_paths: dict[str, str]) -> None:
    """Write one Parquet per split; every split named in out_paths gets a file, even if empty."""
    for split, path in out_paths.items():
        part = manifest[manifest.split == split].reset_index(drop=True)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(path, index=False)
        log.info("wrote %s (%d scans)", path, len(part))


REPORT_COLUMNS = ("report", "region_texts", "labels")


def derangement(n: int, rng):
    """A random permutation of range(n) that moves every element (n >= 2), from numpy Generator `rng`: a cyclic
    shift of a random order, so every position gives to one and takes from another."""
    import numpy as np

    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, 1)
    return perm


def paired_with_other_reports(manifest, seed: int):
    """The control that a model's findings come from the image: every scan of `manifest` keeps its image and
    masks and gets another scan's report, region texts and labels (a seeded random derangement of the rows:
    no scan keeps its own). A model trained on it can learn the reports' language and frequencies, not which
    image shows which finding. Needs at least two rows."""
    import numpy as np

    from reg2rg.errors import InputError

    n = len(manifest)
    if n < 2:
        raise InputError("manifest", f"pairing reports with other scans needs at least two scans, got {n}")
    perm = derangement(n, np.random.default_rng(seed))
    out = manifest.reset_index(drop=True).copy()
    for col in REPORT_COLUMNS:
        out[col] = manifest[col].reset_index(drop=True).iloc[perm].reset_index(drop=True)
    return out


def read_manifest(path, included_only: bool = False):
    import pandas as pd

    df = pd.read_parquet(path)
    validate_manifest(df, str(path))
    return df[df.status == "included"].reset_index(drop=True) if included_only else df
