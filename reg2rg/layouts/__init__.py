"""The data set layouts the workflow knows (`datasets.<name>.layout` in the config): which scans exist and
where their parts lie. `inventory(layout, root, split)` dispatches on the layout's name (LAYOUTS).

    common      the inventory's columns and paths (relative to the data set root), CT-RATE label CSVs
    radgenome   RadGenome-ChestCT: source splits, region masks, region report and label CSVs
    ctrg        CTRG-Chest-548K (and the synthetic demo_ctrg): annotation.json, whole reports, random split,
                intensity detection, `python -m reg2rg.layouts conform` (__main__.py)
"""
from __future__ import annotations

from reg2rg.errors import ConfigError
from reg2rg.layouts.ctrg import ctrg_inventory
from reg2rg.layouts.radgenome import radgenome_inventory


def _ctrg_inventory(root, split: dict | None = None):
    """CTRG-Chest-548K layout (annotation.json + DICOM folders or NIfTI files): see reg2rg.layouts.ctrg.
    `split`: {"seed", "test_fraction"} of the random train/test split (default: the paper's 8:2, seed 0)."""
    unknown = set(split or {}) - {"seed", "test_fraction"}
    if unknown:
        raise ConfigError(f"split: unknown key(s) {', '.join(sorted(unknown))}; known: seed, test_fraction")
    return ctrg_inventory(root, **(split or {}))


LAYOUTS = {"radgenome": radgenome_inventory, "ctrg": _ctrg_inventory}


def inventory(layout: str, root, split: dict | None = None):
    """One row per input scan of a data set in `layout` (see INVENTORY_COLUMNS; paths relative to `root`).
    `split` (ctrg layout only): the seed and test fraction of the random split; RadGenome keeps its source
    splits."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown data set layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](root, split)
