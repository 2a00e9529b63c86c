"""What every data set layout (reg2rg.layouts) speaks: the inventory's columns, the paths in it, the CT-RATE
label CSVs.

An inventory has one row per input scan (the scans are what the manifest must account for):
`case_id, split, source_split, image, mask_dir, report_csv, labels_csv, intensity_mode`.

The paths (`image`, `mask_dir`, `report_csv`, `labels_csv`) are POSIX paths relative to the data set root,
never absolute: a folder above or at the root may be named after the patient, and patient identifiers reach
no output. Every reader of these columns takes the root (`source_root`) and resolves them with
`source_path`. The CT-RATE metadata CSVs (`ctrate_metadata` in the config) may lie outside the root, so
they are not in the table: the ingest stage gets them from the config (`ingest_inventory(metadata=...)`),
by source split.
"""
from __future__ import annotations

from pathlib import Path

from reg2rg.constants import ABNORMALITY_LABELS
from reg2rg.errors import InputError
from reg2rg.files import relative_source

INVENTORY_COLUMNS = ["case_id", "split", "source_split", "image", "mask_dir", "report_csv", "labels_csv",
                     "intensity_mode"]
PATH_COLUMNS = ["image", "mask_dir", "report_csv", "labels_csv"]  # relative to the data set root


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
    rel = relative_source(path, root)
    if rel is None:
        raise InputError(root, f"a {what} lies outside the data set root; the tables name files relative to "
                               "the root (no absolute path): move it under the root")
    return rel


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
