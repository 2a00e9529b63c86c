"""CTRG-Chest-548K (and the synthetic `demo_ctrg`): volumes plus whole reports in the annotation JSON form.

Layout under the data set's root:

    annotation.json   {"train": [{"id", "report", "image_path"}, ...], "test": [...]}  (other split keys,
                      e.g. "val", are read too; the key is kept as `source_split`)
    <image_path>      per scan, relative to the root (or absolute, under the root): a DICOM series folder or
                      a NIfTI file. An image outside the root is refused: the tables name it relative to the
                      root, never by an absolute path (reg2rg.layouts.common)
    labels.csv        optional: `id` + the 18 CT-RATE labels (the demo has them; CTRG does not)

Split: the paper splits CTRG at random 8:2; the manifest split is a seeded random permutation of the sorted
case ids, the first round(0.2 n) being `test` (seed 0 unless told otherwise), whatever the annotation's keys.

Intensity: CTRG as distributed is not in Hounsfield units. Its volumes are stacks of 8-bit windowed slices
(values 0..255, air 0, no negative values), and the public NIfTI copy stores slices first with no
trustworthy spacing. `detect_intensity_mode` samples a few volumes and calls the data set `hu` (air below
-500) or `windowed` (integers within [0, 255]); the inventory records it per scan (`intensity_mode`).
Downstream: SAT's input maps windowed values to approximate HU (reg2rg.segment.sat.windowed_to_hu); the
model side may use `windowed_to_model_range`. A slices-first NIfTI is refused with the command that
conforms it (`python -m reg2rg.layouts conform`), since ingestion would otherwise take slices for columns.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reg2rg.files import read_json, relative_source
from reg2rg.errors import ConfigError, InputError, check_unique_ids
from reg2rg.layouts.common import INVENTORY_COLUMNS, read_ctrate_labels, relative_to_root, source_path

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd

log = logging.getLogger(__name__)

ANNOTATION = "annotation.json"
LABELS = "labels.csv"
SPLIT_SEED = 0
TEST_FRACTION = 0.2
INTENSITY_SAMPLE = 5
AIR_HU_BELOW = -500.0


# ------------------------------------------------------------------------------------------------ reading
def read_annotation(path) -> pd.DataFrame:
    """annotation.json -> DataFrame `case_id, source_split, report, image_path` (file order). InputError
    naming the file for a missing file, bad JSON, an entry without an id, or an id given twice."""
    import pandas as pd

    path = Path(path)
    data = read_json(path, "annotation file", "expected annotation.json in the data set's root")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise InputError(path, 'expected {"train": [{"id", "report", "image_path"}, ...], "test": [...]}')
    rows = []
    for split, entries in data.items():
        for n, e in enumerate(entries):
            if not isinstance(e, dict) or not str(e.get("id", "")).strip():
                raise InputError(path, f"{split}[{n}]: entry without an id")
            rows.append({"case_id": str(e["id"]).strip(), "source_split": str(split),
                         "report": e.get("report"), "image_path": e.get("image_path")})
    df = pd.DataFrame(rows, columns=["case_id", "source_split", "report", "image_path"])
    check_unique_ids(df.case_id, path, "id")
    if df.empty:
        raise InputError(path, "no entries")
    return df


def resolve_image(root, case_id: str, image_path) -> Path:
    """The scan's file or DICOM folder: `image_path` relative to the root (or absolute); without one,
    `images/{id}` (folder), `images/{id}.nii.gz` or `{id}.nii.gz`, whichever exists."""
    root = Path(root)
    if image_path:
        p = Path(image_path)
        return p if p.is_absolute() else root / p
    for cand in (root / "images" / case_id, root / "images" / f"{case_id}.nii.gz", root / f"{case_id}.nii.gz"):
        if cand.exists():
            return cand
    return root / "images" / case_id


def random_split(case_ids, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> dict[str, str]:
    """case id -> `train` or `test`: a seeded permutation of the sorted ids, round(fraction n) to test."""
    if not 0 < float(test_fraction) < 1:
        raise ConfigError(f"split.test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    ids = sorted(set(case_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = int(round(test_fraction * len(ids)))
    test = {ids[i] for i in order[:n_test]}
    return {c: ("test" if c in test else "train") for c in ids}


# ------------------------------------------------------------------------------------------------ intensity
def _nifti_shape(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    return tuple(int(s) for s in nib.load(str(path)).shape)


def nifti_slices_first(path) -> bool:
    """True for a NIfTI whose first axis is the slice axis (shape n x M x M with n < M), as in the public
    CTRG copy; read from the header only."""
    shape = _nifti_shape(Path(path))
    return len(shape) == 3 and shape[1] == shape[2] and shape[0] < shape[1]


def _sample_values(image: Path) -> np.ndarray:
    """Voxel values of one middle slice (HU for DICOM: slope and intercept applied)."""
    if image.is_dir():
        import pydicom

        files = sorted(p for p in image.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InputError(image, "empty DICOM folder")
        ds = pydicom.dcmread(files[len(files) // 2])
        arr = ds.pixel_array.astype(np.float64)
        return arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    import nibabel as nib

    img = nib.load(str(image))
    shape = img.shape
    axis = 0 if nifti_slices_first(image) else len(shape) - 1
    index = [slice(None)] * len(shape)
    index[axis] = shape[axis] // 2
    return np.asarray(img.dataobj[tuple(index)], dtype=np.float64)


def classify_values(values: np.ndarray) -> str:
    """`hu` (air below -500), `windowed` (integers within [0, 255]) or `unknown`."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return "unknown"
    lo, hi = float(v.min()), float(v.max())
    if lo < AIR_HU_BELOW:
        return "hu"
    if lo >= 0 and hi <= 255 and np.all(v == np.round(v)):
        return "windowed"
    return "unknown"


def detect_intensity_mode(images, sample: int = INTENSITY_SAMPLE, root=None) -> str:
    """The data set's intensity mode from up to `sample` volumes spread over the (sorted) list. InputError
    naming the files when they disagree or when one is neither HU nor 8-bit windowed. The log names a file
    relative to `root` (the data set root: no path above it reaches a log)."""
    found = [Path(p) for p in sorted(map(str, images)) if Path(p).exists()]
    if not found:
        return "hu"  # nothing readable: every scan fails at ingest with its own reason
    picks = sorted({int(i) for i in np.linspace(0, len(found) - 1, min(sample, len(found)))})
    modes = {}
    for i in picks:
        try:
            values = _sample_values(found[i])
        except InputError:
            raise
        except Exception as err:  # unreadable files are ingest's to report
            shown = relative_source(found[i], root) or found[i].name
            log.warning("%s: cannot sample intensities (%s); not used for the intensity mode", shown,
                        str(err).replace(str(found[i]), shown))
            continue
        mode = classify_values(values)
        if mode == "unknown":
            raise InputError(found[i], f"values {values.min():g}..{values.max():g} are neither CT in HU (air below "
                                       f"{AIR_HU_BELOW:g}) nor 8-bit windowed (integers 0..255)")
        modes[str(found[i])] = mode
    kinds = set(modes.values())
    if len(kinds) > 1:
        raise InputError(found[0].parent, f"volumes disagree on their intensities: {modes}")
    mode = kinds.pop() if kinds else "hu"
    log.info("intensity mode %s (from %d volumes)", mode, len(modes))
    return mode


def windowed_to_model_range(array, per_volume: bool = False) -> np.ndarray:
    """8-bit windowed values -> the model's input range [-1, 1] (HU volumes reach it by clamping to
    [-1000, 200] and (x + 400) / 600). Fixed: x / 255 * 2 - 1 (the 8 bits already are a window).
    `per_volume`: min-max over the volume instead, as other CTRG loaders (Reg2RG's own) normalise."""
    a = np.asarray(array, dtype=np.float32)
    if per_volume:
        lo, hi = float(a.min()), float(a.max())
        return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 2 - 1
    return np.clip(a, 0, 255) / 255.0 * 2 - 1


# ------------------------------------------------------------------------------------------------ inventory
def ctrg_inventory(root, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION):
    """One row per annotation entry (reg2rg.layouts.common.INVENTORY_COLUMNS, paths relative to the root).
    A scan whose image is missing still gets its row: ingestion records why it failed."""
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"CTRG root {root} is not a folder (set datasets.<name>.root in the config)")
    ann_path = root / ANNOTATION
    ann = read_annotation(ann_path)
    images = [resolve_image(root, c, p) for c, p in zip(ann.case_id, ann.image_path)]
    for img in images:
        if img.is_file() and img.name.endswith((".nii", ".nii.gz")) and nifti_slices_first(img):
            raise InputError(img, f"slices first (shape {list(_nifti_shape(img))}): conform the data set first with "
                                  f"`python -m reg2rg.layouts conform {root} OUT_DIR [--spacing X Y Z]`, then set the "
                                  "root to OUT_DIR")
    mode = detect_intensity_mode(images, root=root)
    split = random_split(ann.case_id, seed, test_fraction)
    labels = root / LABELS
    inv = pd.DataFrame({
        "case_id": ann.case_id, "split": [split[c] for c in ann.case_id], "source_split": ann.source_split,
        "image": [relative_to_root(root, p, f"image of '{c}' ({ANNOTATION})") for c, p in zip(ann.case_id, images)],
        "mask_dir": None, "report_csv": ANNOTATION, "labels_csv": LABELS if labels.is_file() else None,
        "intensity_mode": mode,
    }, columns=INVENTORY_COLUMNS)
    missing = [rel for p, rel in zip(images, inv.image) if not p.exists()]
    if missing:
        log.warning("%d scans have no image (first: %s); they will be reported as not ingested", len(missing),
                    missing[0])
    # the root is not logged: a folder above it may be named after the patient (the logs are outputs too)
    log.info("CTRG root: %d scans (%s), intensity %s", len(inv), inv.split.value_counts().to_dict(), mode)
    return inv.sort_values(["split", "case_id"]).reset_index(drop=True)


def ctrg_reports(inventory, source_root) -> pd.DataFrame:
    """Whole reports of the inventory's scans (`case_id, report`) from the annotation file(s) it names
    (relative to `source_root`, the data set root)."""
    import pandas as pd

    frames = [read_annotation(source_path(source_root, p)) for p in sorted(set(inventory.report_csv.dropna()))]
    ann = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["case_id", "report"])
    by_id = dict(zip(ann.case_id, ann.report))
    return pd.DataFrame({"case_id": list(inventory.case_id),
                         "report": [by_id.get(c) for c in inventory.case_id]})


def ctrg_labels(inventory, source_root):
    """The 18 labels where the data set has a labels.csv (`id` column, relative to `source_root`):
    `case_id, labels`."""
    import pandas as pd

    frames = [read_ctrate_labels(source_path(source_root, p), id_column="id")
              for p in sorted(set(inventory.labels_csv.dropna()))]
    if not frames:
        return pd.DataFrame({"case_id": pd.Series(dtype=str), "labels": pd.Series(dtype=object)})
    labels = pd.concat(frames, ignore_index=True)
    return labels[labels.case_id.isin(set(inventory.case_id))].drop_duplicates("case_id").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ conform
def conform_nifti(src, dst, spacing=None) -> dict:
    """Rewrite a slices-first NIfTI (array [slice, row, column]) as an ordinary one: ITK x = column (toward
    the patient's left, as displayed slices run), y = row (posterior), z = slice index (assumed to run
    inferior to superior; check a few scans), identity direction; spacing `spacing` (x, y, z mm) or the
    header's (permuted), which CTRG does not guarantee. Values are kept (windowed stays windowed)."""
    import nibabel as nib
    import SimpleITK as sitk

    img = nib.load(str(src))
    arr = np.asanyarray(img.dataobj)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    if nifti_slices_first(src):
        sp = spacing or (zooms[2], zooms[1], zooms[0])
    else:
        arr = arr.transpose(2, 1, 0)  # nibabel [x, y, z] -> ITK array order [z, y, x]
        sp = spacing or tuple(zooms)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    out.SetSpacing([float(v) for v in sp])
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(dst), useCompression=True)
    return {"src": str(src), "dst": str(dst), "size": list(out.GetSize()), "spacing": list(out.GetSpacing())}


def conform_dataset(root, out_dir, spacing=None) -> int:
    """Conform every NIfTI of a CTRG root into out_dir (images/{id}.nii.gz) with a rewritten annotation.json;
    labels.csv is copied. Returns the number of volumes written."""
    import shutil

    from tqdm import tqdm

    root, out_dir = Path(root), Path(out_dir)
    ann = json.loads((root / ANNOTATION).read_text(encoding="utf-8"))
    n = 0
    for split, entries in ann.items():
        for e in tqdm(entries, desc=f"conform {split}", unit="scan"):
            src = resolve_image(root, str(e["id"]), e.get("image_path"))
            if src.is_file() and src.name.endswith((".nii", ".nii.gz")):
                rel = Path("images") / f"{e['id']}.nii.gz"
                conform_nifti(src, out_dir / rel, spacing)
                e["image_path"] = str(rel)
                n += 1
    (out_dir / ANNOTATION).write_text(json.dumps(ann, indent=1) + "\n", encoding="utf-8")
    if (root / LABELS).is_file():
        shutil.copy(root / LABELS, out_dir / LABELS)
    return n


def main(argv=None) -> int:
    """`python -m reg2rg.layouts conform ROOT OUT_DIR [--spacing X Y Z]` (reg2rg/layouts/__main__.py)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m reg2rg.layouts", description="CTRG-Chest-548K helpers")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("conform", help="rewrite slices-first NIfTI volumes as ordinary ones (see conform_nifti)")
    c.add_argument("root")
    c.add_argument("out_dir")
    c.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="spacing in mm to write (CTRG's headers are not trustworthy)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n = conform_dataset(args.root, args.out_dir, tuple(args.spacing) if args.spacing else None)
    log.info("conformed %d volumes into %s", n, args.out_dir)
    return 0

