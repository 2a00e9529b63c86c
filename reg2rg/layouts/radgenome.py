"""The RadGenome-ChestCT layout (layout `radgenome`): CT-RATE volumes with RadGenome-ChestCT's region masks,
region report CSVs and abnormality label CSVs, in their source splits (train; valid, which is the test split).

Under the data set's root:

    {train,valid}_preprocessed/<id>/<id>a/<name>.nii.gz        the volumes
    {train,valid}_region_mask/seg_<name>/                      the region masks
    train_region_report.csv, validation_region_report.csv      the region reports (reg2rg.region_reports reads them)
    multi_abnormality_labels/{train,valid}_predicted_labels.csv   optional: the 18 CT-RATE labels
"""
from __future__ import annotations

import logging
from pathlib import Path

from reg2rg.errors import ConfigError, InputError
from reg2rg.layouts.common import INVENTORY_COLUMNS, case_id_from_filename, read_ctrate_labels, source_path

log = logging.getLogger(__name__)

# RadGenome-ChestCT: source split -> (manifest split, volume folder, mask folder, report CSV, labels CSV)
RADGENOME_SPLITS = {
    "train": ("train", "train_preprocessed", "train_region_mask", "train_region_report.csv",
              "multi_abnormality_labels/train_predicted_labels.csv"),
    "valid": ("test", "valid_preprocessed", "valid_region_mask", "validation_region_report.csv",
              "multi_abnormality_labels/valid_predicted_labels.csv"),
}


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


def radgenome_labels(inv, source_root):
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
