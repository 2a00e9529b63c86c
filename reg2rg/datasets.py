"""Readers for the data set layouts the workflow knows: which scans exist, where their parts lie.

`inventory(...)` returns one row per input scan (the scans are what the manifest must account for):
`case_id, split, source_split, image, mask_dir, report_csv, labels_csv, intensity_mode`.

The paths (`image`, `mask_dir`, `report_csv`, `labels_csv`) are POSIX paths relative to the data set root,
never absolute: a folder above or at the root may be named after the patient, and patient identifiers reach
no output. Every reader of these columns takes the root (`source_root`) and resolves them with
`source_path`. The CT-RATE metadata CSVs (`ctrate_metadata` in the config) may lie outside the root, so
they are not in the table: the ingest stage gets them from the config (`ingest_inventory(metadata=...)`),
by source split.
"""
from __future__ import annotations

import logging
from pathlib import Path

from reg2rg.constants import ABNORMALITY_LABELS
from reg2rg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

INVENTORY_COLUMNS = ["case_id", "split", "source_split", "image", "mask_dir", "report_csv", "labels_csv",
                     "intensity_mode"]
PATH_COLUMNS = ["image", "mask_dir", "report_csv", "labels_csv"]  # relative to the data set root

# RadGenome-ChestCT: source split -> (manifest split, volume folder, mask folder, report CSV, labels CSV)
RADGENOME_SPLITS = {
    "train": ("train", "train_preprocessed", "train_region_mask", "train_region_report.csv",
              "multi_abnormality_labels/train_predicted_labels.csv"),
    "valid": ("test", "valid_preprocessed", "valid_region_mask", "validation_region_report.csv",
              "multi_abnormality_labels/valid_predicted_labels.csv"),
}


def case_id_from_filename(name: str) -> str:
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def source_path(source_root, path) -> Path | None:
    """An inventory path (relative to the data set root) as a path to read; None for a missing value."""
    import pandas as pd

    if path is None or (not isinstance(path, str) and pd.isna(path)) or str(path) == "":
        return None
    return Path(source_root) / path


def relative_to_root(root, path, what: str = "file") -> str:
    """`path` (under `root`) as the POSIX path relative to it that the inventory stores (reg2rg.files.
    relative_source); InputError when it lies outside the root (the tables would need its absolute path)."""
    from reg2rg.files import relative_source

    rel = relative_source(path, root)
    if rel is None:
        raise InputError(root, f"a {what} lies outside the data set root; the tables name files relative to "
                               "the root (no absolute path): move it under the root")
    return rel


def radgenome_inventory(root, split: dict | None = None):
    """Every volume under a RadGenome-ChestCT root, with its mask folder, report CSV and labels CSV (paths
    relative to the root). The source splits are kept: a `split` setting (a random split) is refused.
    """
    if split:
        raise ConfigError("split: the radgenome layout keeps its source splits (train/valid); a random split is "
                          "only for the ctrg layout")
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"RadGenome root {root} is not a folder (set datasets.<name>.root in the config)")
    rows = []
    for source_split, (split, vol_dir, mask_dir, report_csv, labels_csv) in RADGENOME_SPLITS.items():
        vols = sorted((root / vol_dir).glob("*/*/*.nii.gz"))
        if not (root / vol_dir).is_dir():
            log.warning("RadGenome root: no %s folder; no %s scans", vol_dir, source_split)
            continue
        for vol in vols:
            rows.append({
                "case_id": case_id_from_filename(vol.name),
                "split": split,
                "source_split": source_split,
                "image": vol.relative_to(root).as_posix(),
                "mask_dir": f"{mask_dir}/seg_{case_id_from_filename(vol.name)}",
                "report_csv": report_csv,
                "labels_csv": labels_csv if (root / labels_csv).is_file() else None,
                "intensity_mode": "hu",
            })
    inv = pd.DataFrame(rows, columns=INVENTORY_COLUMNS)
    if inv.empty:
        raise InputError(root, "no volumes found (expected {train,valid}_preprocessed/<id>/<id>a/<name>.nii.gz)")
    dup = inv[inv.case_id.duplicated(keep=False)]
    if not dup.empty:
        raise InputError(root, f"scan names occur twice: {sorted(set(dup.case_id))[:5]}")
    # the root is not logged: a folder above it may be named after the patient (the logs are outputs too)
    log.info("RadGenome root: %d scans (%s)", len(inv), inv.split.value_counts().to_dict())
    return inv.sort_values(["split", "case_id"]).reset_index(drop=True)


def read_ctrate_labels(path, id_column: str = "VolumeName"):
    """CT-RATE label CSV -> DataFrame `case_id, labels` (labels: list of 18 ints in ABNORMALITY_LABELS order)."""
    import pandas as pd

    df = pd.read_csv(path)
    missing = [c for c in (id_column, *ABNORMALITY_LABELS) if c not in df.columns]
    if missing:
        raise InputError(path, f"missing label columns {missing}")
    values = df[list(ABNORMALITY_LABELS)]
    if not values.isin([0, 1]).all().all():
        raise InputError(path, "label values must be 0 or 1")
    return pd.DataFrame({
        "case_id": [case_id_from_filename(str(v)) for v in df[id_column]],
        "labels": [list(map(int, r)) for r in values.itertuples(index=False)],
    })


def ctrg_inventory(root, split: dict | None = None):
    """CTRG-Chest-548K layout (annotation.json + DICOM folders or NIfTI files): see reg2rg.ctrg. `split`:
    {"seed", "test_fraction"} of the random train/test split (default: the paper's 8:2, seed 0)."""
    from reg2rg.ctrg import ctrg_inventory as _ctrg_inventory

    unknown = set(split or {}) - {"seed", "test_fraction"}
    if unknown:
        raise ConfigError(f"split: unknown key(s) {', '.join(sorted(unknown))}; known: seed, test_fraction")
    return _ctrg_inventory(root, **(split or {}))


LAYOUTS = {"radgenome": radgenome_inventory, "ctrg": ctrg_inventory}


def inventory(layout: str, root, split: dict | None = None):
    """One row per input scan of a data set in `layout` (see INVENTORY_COLUMNS; paths relative to `root`).
    `split` (ctrg layout only): the seed and test fraction of the random split; RadGenome keeps its source
    splits."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown data set layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](root, split)


def inventory_labels(inv, source_root):
    """Labels of the inventory's scans from the label CSVs it names (relative to `source_root`, the data set
    root): `case_id, labels`.

    Scans without a label file, or missing from theirs, get no row (labels unknown, not all-zero).
    """
    import pandas as pd

    frames = [read_ctrate_labels(source_path(source_root, p)) for p in sorted(set(inv.labels_csv.dropna()))]
    if not frames:
        return pd.DataFrame({"case_id": pd.Series(dtype=str), "labels": pd.Series(dtype=object)})
    labels = pd.concat(frames, ignore_index=True)
    labels = labels[labels.case_id.isin(set(inv.case_id))].drop_duplicates("case_id")
    unlabeled = len(set(inv.case_id) - set(labels.case_id))
    if unlabeled:
        log.warning("%d scans have no abnormality labels", unlabeled)
    return labels.reset_index(drop=True)
