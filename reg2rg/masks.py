"""Region masks: import one mask file per region onto the ingested volume's grid and store them as one
uint16 label file (bit i set <=> voxel in REGIONS[i]) with a JSON sidecar.

Masks are placed in PHYSICAL space (SimpleITK resampling with the volume as reference, nearest neighbour),
never aligned by array index: a mask on another grid (other origin, spacing, size or orientation) lands
where it belongs, and a mask whose voxels all fall outside the volume is recorded as `outside`.

A missing, empty or unreadable region file is recorded in the sidecar, never raised: the manifest stage
decides what to do with a scan whose regions are incomplete.

Sidecar (`<out>.json`, beside `<out>.nii.gz`):
    regions         list of the 10 region names: the bit order
    status          {region: "present" | "missing" | "empty" | "outside" | "error: <problem>"}
    voxels          {region: int}  voxels of the region on the volume grid (0 unless present)
    source_voxels   {region: int | None}  non-zero voxels in the source file (None: missing or error)
    resampled       {region: bool | None}  true when the source grid differed from the volume's
    notes           {region: str | None}  a human-readable reason for anything but a plain `present`
    sources         {region: {"path": file name | None, "sha256": str | None}}
    volume          {"path" (file name), "sha256", "size", "spacing", "origin", "direction"}  (ITK [x, y, z])
    output          {"path" (file name), "sha256", "dtype"}

Paths appear as file names only (a folder can be named after the patient). The label file declares itself:
LABEL_FILE_NOTE in its NIfTI header; read_label_file refuses an integer image that does not (a binary mask
or another tool's label map would otherwise read as region bits). A truncated region file is an `error`
status (files.check_nifti_complete, the check ingest applies to volumes), never half a mask.
    format_version  int
    reg2rg_version  str
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from reg2rg import __version__
from reg2rg.constants import MASK_DTYPE, REGIONS, region_index
from reg2rg.files import atomic_path, check_nifti_complete, is_nifti, read_json, sha256_file as _sha256, write_json_atomic
from reg2rg.errors import InputError
from reg2rg.geometry import grid_record, itk_message, resample_to_reference, same_grid

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Every label file reg2rg writes says so in its NIfTI header (`descrip`): a label file must declare itself,
# else any integer image (a binary mask, another tool's label map) would read as region bits.
LABEL_FILE_NOTE = "reg2rg region labels v1"

STATUS_PRESENT = "present"
STATUS_MISSING = "missing"
STATUS_EMPTY = "empty"
STATUS_OUTSIDE = "outside"
STATUS_ERROR_PREFIX = "error: "


# --------------------------------------------------------------------------------------------------------------
# Pure functions on arrays
# --------------------------------------------------------------------------------------------------------------

def pack_masks(masks: np.ndarray) -> np.ndarray:
    """Pack boolean masks [n_regions, z, y, x] (n_regions <= 16, overlaps allowed) into one uint16 label map:
    bit i of a voxel is set iff masks[i] is true there."""
    masks = np.asarray(masks)
    if masks.ndim < 1 or masks.shape[0] > 16:
        raise ValueError(f"pack_masks: expected [n<=16, ...] masks, got shape {masks.shape}")
    label = np.zeros(masks.shape[1:], dtype=np.uint16)
    for i in range(masks.shape[0]):
        label |= masks[i].astype(bool).astype(np.uint16) << np.uint16(i)
    return label


def unpack_label_map(label: np.ndarray, n_regions: int = len(REGIONS)) -> np.ndarray:
    """Unpack a uint16 label map [z, y, x] into boolean masks [n_regions, z, y, x] (bit i -> masks[i]).

    Raises ValueError if the label map has a bit at or above `n_regions` set (it is not a region label map)."""
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"unpack_label_map: expected an integer label map, got dtype {label.dtype}")
    label = label.astype(np.uint16, copy=False)
    stray = int(np.bitwise_or.reduce(label, axis=None)) >> n_regions if label.size else 0
    if stray:
        raise ValueError(f"unpack_label_map: label map has bits above the {n_regions} region bits set")
    return np.stack([((label >> np.uint16(i)) & np.uint16(1)).astype(bool) for i in range(n_regions)])


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------

def sidecar_path(out_path: str | Path) -> Path:
    """`masks/x.nii.gz` -> `masks/x.json` (also `.nii`, `.nrrd`, `.mha`)."""
    p = Path(out_path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_name(name + ".json")




def write_label_file(label: np.ndarray, geom: dict, path: Path) -> None:
    """Write a uint16 label map [z, y, x] on `geom`'s grid (ITK order) as a NIfTI that declares itself a
    reg2rg label file (LABEL_FILE_NOTE in its header), atomically."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(label, dtype=np.uint16))
    img.SetSpacing(geom["spacing"])
    img.SetOrigin(geom["origin"])
    img.SetDirection(geom["direction"])
    img.SetMetaData("ITK_FileNotes", LABEL_FILE_NOTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def _declared_label_file(path: Path) -> bool:
    """True when `path` says it is a reg2rg label file: LABEL_FILE_NOTE in its header, or a masks sidecar
    beside it with the region order (label files written before the header note)."""
    reader = _image_header(path, "cannot read as an image")
    if reader.HasMetaDataKey("descrip") and reader.GetMetaData("descrip").strip() == LABEL_FILE_NOTE:
        return True
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("regions") == list(REGIONS) and "format_version" in meta


def read_label_file(path: str | Path) -> tuple[np.ndarray, object]:
    """A reg2rg uint16 label file as (label array [z, y, x], SimpleITK image). InputError naming the file
    when it is truncated, does not declare itself a reg2rg label file (a binary mask or another tool's label
    map: the message says which it looks like and what was expected), or holds bits outside the regions."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "region label file not found")
    if is_nifti(path):
        check_nifti_complete(path)
    declared = _declared_label_file(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, f"cannot read: {itk_message(err, short=True)}") from err
    label = sitk.GetArrayFromImage(img)
    if not declared:
        values = np.unique(label)
        if values.size <= 2 and set(values.tolist()) <= {0, 1, 255}:
            looks = "it is a binary mask (values " + ", ".join(map(str, values.tolist())) + ")"
        else:
            looks = (f"it holds {values.size} distinct values from {values.min()} to {values.max()}: another "
                     "tool's label map?")
        raise InputError(path, f"not a reg2rg region label file: {looks}. A label file must declare itself "
                               f"('{LABEL_FILE_NOTE}' in its header, as the masks stage writes it, or a masks "
                               f"sidecar {sidecar_path(path).name} beside it); otherwise give a folder with one "
                               f"binary mask per region named {{region}}.nii.gz (regions: {', '.join(REGIONS)})")
    if label.dtype != np.dtype(MASK_DTYPE):
        raise InputError(path, f"voxel type {label.dtype}, expected {MASK_DTYPE}")
    try:
        unpack_label_map(label)
    except ValueError as err:
        raise InputError(path, str(err)) from err
    return label, img


def region_mask_files(seg_dir: str | Path) -> dict[str, Path | None]:
    """The region files in one scan's mask folder: `{seg_dir}/{region}.nii.gz` for each of the 10 regions,
    None where absent. Names match case-insensitively (whitespace stripped); `.nii` is accepted as well as
    `.nii.gz` (which wins if both exist). Other files are ignored (logged at debug level)."""
    folder = Path(seg_dir)
    found: dict[str, Path] = {}
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            name = entry.name
            for ext in (".nii.gz", ".nii"):
                if name.lower().endswith(ext) and entry.is_file():
                    key = name[: -len(ext)].strip().lower()
                    if key not in REGIONS:
                        log.debug("%s: not a region file, ignored", entry)
                    elif key not in found or ext == ".nii.gz":
                        found[key] = entry
                    break
    else:
        log.warning("%s: mask folder not found; every region counts as missing", folder)
    return {r: found.get(r) for r in REGIONS}


def radgenome_mask_files(mask_root: str | Path, case_id: str) -> dict[str, Path | None]:
    """The region files of one RadGenome scan: `{mask_root}/seg_{case_id}/{region}.nii.gz` for each of the 10
    regions (file names contain spaces, e.g. `trachea and bronchie.nii.gz`), None where the file is absent.

    mask_root is the folder holding `seg_{case_id}` (e.g. `.../train_region_mask`). See region_mask_files."""
    return region_mask_files(Path(mask_root) / f"seg_{case_id}")


def _physical_bbox(geom: dict, index_lo, index_hi) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (mm, LPS) of the voxel-index box [lo, hi] (inclusive, ITK order)."""
    d = np.asarray(geom["direction"]).reshape(3, 3)
    sp = np.asarray(geom["spacing"])
    o = np.asarray(geom["origin"])
    corners = []
    for cx in (index_lo[0] - 0.5, index_hi[0] + 0.5):
        for cy in (index_lo[1] - 0.5, index_hi[1] + 0.5):
            for cz in (index_lo[2] - 0.5, index_hi[2] + 0.5):
                corners.append(o + d @ (np.array([cx, cy, cz]) * sp))
    c = np.asarray(corners)
    return c.min(axis=0), c.max(axis=0)


def _fmt_box(lo, hi) -> str:
    return "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(lo, hi)) + "] mm"


def _image_header(path: Path, problem: str):
    """A SimpleITK reader with the header of `path` read (no voxels); InputError `problem: why` if it can't."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(path, f"{problem}: {itk_message(err, short=True)}") from err
    return reader


def _read_volume_geometry(volume_path: Path) -> dict:
    if not volume_path.is_file():
        raise InputError(volume_path, "volume file not found (run the ingest stage first)")
    reader = _image_header(volume_path, "cannot read the volume")
    if reader.GetDimension() != 3:
        raise InputError(volume_path, f"volume is {reader.GetDimension()}-D, expected 3-D")
    return grid_record(reader)


def _place_one(path: Path, vol_geom: dict) -> dict:
    """Read one region file and place it on the volume grid. Returns a record with keys
    status, mask (bool [z, y, x] or None), voxels, source_voxels, resampled, note. Never raises on bad input."""
    import SimpleITK as sitk

    rec = {"status": None, "mask": None, "voxels": 0, "source_voxels": None, "resampled": None, "note": None}
    if is_nifti(path):
        try:
            check_nifti_complete(path)  # ITK would read a truncated file as a partial mask without complaint
        except InputError as err:
            rec["status"] = STATUS_ERROR_PREFIX + "truncated or corrupt file"
            rec["note"] = f"{path.name}: {err.problem}"
            return rec
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        rec["status"] = STATUS_ERROR_PREFIX + "unreadable image file"
        rec["note"] = f"{path.name}: cannot read as an image: {itk_message(err, short=True)}"
        return rec
    if img.GetDimension() != 3:
        rec["status"] = STATUS_ERROR_PREFIX + f"{img.GetDimension()}-D image, expected 3-D"
        rec["note"] = f"{path.name}: size {list(img.GetSize())}"
        return rec
    if img.GetNumberOfComponentsPerPixel() != 1:
        rec["status"] = STATUS_ERROR_PREFIX + f"{img.GetNumberOfComponentsPerPixel()} components per voxel, expected 1"
        rec["note"] = f"{path.name}: not a scalar mask"
        return rec

    src_geom = grid_record(img)
    src = sitk.GetArrayViewFromImage(img)
    binary = src > 0
    n_src = int(np.count_nonzero(binary))
    rec["source_voxels"] = n_src
    same = same_grid(src_geom, vol_geom)
    rec["resampled"] = not same
    if n_src == 0:
        rec["status"] = STATUS_EMPTY
        rec["note"] = "the file holds no non-zero voxel"
        return rec

    if same:
        placed = binary.copy()
    else:
        bin_img = sitk.GetImageFromArray(binary.astype(np.uint8))
        bin_img.CopyInformation(img)
        out = resample_to_reference(bin_img, vol_geom)  # nearest neighbour, uint8, 0 outside
        placed = sitk.GetArrayFromImage(out) > 0
    n = int(np.count_nonzero(placed))
    if n == 0:
        idx = np.argwhere(binary)  # [z, y, x]
        lo, hi = idx.min(axis=0)[::-1], idx.max(axis=0)[::-1]
        m_lo, m_hi = _physical_bbox(src_geom, lo, hi)
        v_lo, v_hi = _physical_bbox(vol_geom, [0, 0, 0], [s - 1 for s in vol_geom["size"]])
        rec["status"] = STATUS_OUTSIDE
        rec["note"] = (
            f"the mask's {n_src} voxels lie in {_fmt_box(m_lo, m_hi)} (LPS), none inside the volume "
            f"{_fmt_box(v_lo, v_hi)}: the mask belongs to another scan or another frame of reference"
        )
        return rec

    rec["status"] = STATUS_PRESENT
    rec["mask"] = placed
    rec["voxels"] = n
    if not same:
        src_ml = n_src * float(np.prod(src_geom["spacing"]))
        out_ml = n * float(np.prod(vol_geom["spacing"]))
        frac = out_ml / src_ml if src_ml else 1.0
        rec["note"] = f"placed in physical space from another grid; {min(frac, 1.0):.0%} of its volume inside"
        if frac < 0.5:
            log.warning("%s: only %.0f%% of the mask lies inside the volume", path.name, 100 * frac)
    return rec


def _cache_valid(out_path: Path, side_path: Path, vol_sha: str, sources: dict) -> dict | None:
    if not (out_path.is_file() and side_path.is_file()):
        return None
    try:
        side = json.loads(side_path.read_text())
    except (OSError, ValueError):
        return None
    try:
        ok = (
            side.get("format_version") == FORMAT_VERSION
            and side.get("regions") == list(REGIONS)
            and side["volume"]["sha256"] == vol_sha
            and {r: s["sha256"] for r, s in side["sources"].items()} == {r: s["sha256"] for r, s in sources.items()}
            and side["output"]["sha256"] == _sha256(out_path)
        )
    except (KeyError, TypeError, AttributeError):
        return None
    return side if ok else None


def import_region_masks(
    volume_path: str | Path,
    region_files: dict[str, str | Path | None],
    out_path: str | Path,
) -> dict:
    """Place each region's mask file on the grid of `volume_path` (an ingested volume) in physical space,
    binarise it (> 0) and write all of them as one uint16 label file `out_path` (bit i <=> REGIONS[i]) with a
    JSON sidecar beside it (see the module docstring). Returns the sidecar dict.

    `region_files` maps region names (case-insensitive) to a file, or None when there is none; regions not
    named count as missing. A missing, empty, unreadable or misplaced region file is recorded in the sidecar,
    never raised. An unreadable volume raises InputError.

    If both outputs exist and the sidecar's volume and source checksums still match, nothing is recomputed."""

    volume_path, out_path = Path(volume_path), Path(out_path)
    side_path = sidecar_path(out_path)

    files: dict[str, Path | None] = {r: None for r in REGIONS}
    for name, f in region_files.items():
        try:
            key = REGIONS[region_index(name)]
        except ValueError as err:
            raise ValueError(f"import_region_masks: {err}") from None
        files[key] = Path(f) if f is not None else None

    vol_geom = _read_volume_geometry(volume_path)
    vol_sha = _sha256(volume_path)

    sources: dict[str, dict] = {}
    for r, f in files.items():
        if f is not None and f.is_file():
            sources[r] = {"path": f.name, "sha256": _sha256(f)}
        else:
            sources[r] = {"path": f.name if f is not None else None, "sha256": None}

    cached = _cache_valid(out_path, side_path, vol_sha, sources)
    if cached is not None:
        log.info("%s: up to date, skipped", out_path)
        return cached

    z, y, x = vol_geom["size"][::-1]
    label = np.zeros((z, y, x), dtype=np.uint16)
    status, voxels, source_voxels, resampled, notes = {}, {}, {}, {}, {}
    for i, r in enumerate(REGIONS):
        f = files[r]
        if f is None or not f.exists():
            rec = {"status": STATUS_MISSING, "mask": None, "voxels": 0, "source_voxels": None, "resampled": None,
                   "note": "no file given" if f is None else f"file not found: {f.name}"}
        elif not f.is_file():
            rec = {"status": STATUS_ERROR_PREFIX + "not a file", "mask": None, "voxels": 0, "source_voxels": None,
                   "resampled": None, "note": f"{f.name} is not a regular file"}
        else:
            rec = _place_one(f, vol_geom)
        if rec["mask"] is not None:
            label |= rec["mask"].astype(np.uint16) << np.uint16(i)
        status[r], voxels[r], source_voxels[r] = rec["status"], rec["voxels"], rec["source_voxels"]
        resampled[r], notes[r] = rec["resampled"], rec["note"]
        if rec["status"] != STATUS_PRESENT:
            log.info("%s: region %r %s%s", out_path.name, r, rec["status"], f" ({rec['note']})" if rec["note"] else "")

    write_label_file(label, vol_geom, out_path)

    side = {
        "regions": list(REGIONS),
        "status": status,
        "voxels": voxels,
        "source_voxels": source_voxels,
        "resampled": resampled,
        "notes": notes,
        "sources": sources,
        "volume": {"path": volume_path.name, "sha256": vol_sha, **vol_geom},
        "output": {"path": out_path.name, "sha256": _sha256(out_path), "dtype": MASK_DTYPE},
        "format_version": FORMAT_VERSION,
        "reg2rg_version": __version__,
    }
    write_json_atomic(side_path, side)
    return side


def read_region_masks(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a label file written by import_region_masks and its sidecar: (bool masks [10, z, y, x], sidecar).

    Raises InputError if either file is missing or malformed."""
    path = Path(path)
    side_path = sidecar_path(path)
    if not path.is_file():
        raise InputError(path, "region mask file not found")
    side = read_json(side_path, "region mask sidecar")
    if side.get("regions") != list(REGIONS):
        raise InputError(side_path, f"region order {side.get('regions')!r} differs from {list(REGIONS)!r}")
    label, _ = read_label_file(path)
    return unpack_label_map(label), side


def import_case_masks(volume_path: str | Path, mask_dir: str | Path | None, out_path: str | Path,
                      source_root=None) -> dict:
    """One scan of the workflow: import the region files of `mask_dir` (a RadGenome-style `seg_<id>` folder,
    relative to `source_root` when given) onto `volume_path`. Raises InputError when the scan has no mask
    folder at all (nothing to import), naming it as the inventory does; missing or bad files inside it are
    recorded in the sidecar as usual."""
    from reg2rg.layouts.common import source_path

    if mask_dir is None or str(mask_dir) == "":
        raise InputError(volume_path, "the data set gives no mask folder for this scan")
    folder = Path(mask_dir) if source_root is None else source_path(source_root, mask_dir)
    if not folder.is_dir():
        raise InputError(mask_dir, "mask folder not found")
    return import_region_masks(volume_path, region_mask_files(folder), out_path)


def masks_inventory(inventory, volume_status, volumes_dir: str | Path, out_dir: str | Path, source_root,
                    threads: int = 1):
    """Import the region masks of every scan of the inventory that was ingested.

    inventory: DataFrame with `case_id, mask_dir` (reg2rg.layouts.common.INVENTORY_COLUMNS; `mask_dir` relative to
    `source_root`, the data set root); volume_status: the ingest
    stage's `case_id, status, reason`. Writes `{out_dir}/{case_id}.nii.gz` and `.json` per scan and returns
    `case_id, status, reason` for every inventory scan: `ok` (see the sidecar for each region), `error`
    (no mask folder, unreadable volume, ...) or `skipped` (not ingested)."""
    from reg2rg.layouts.common import source_path
    from reg2rg.per_scan import ready_after, run_per_case

    volumes_dir, out_dir = Path(volumes_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ready, skipped = ready_after(inventory, volume_status, "not ingested")
    jobs = []
    for inv in ready:
        mask_dir = getattr(inv, "mask_dir", None)
        jobs.append((inv.case_id, {
            "volume_path": volumes_dir / f"{inv.case_id}.nii.gz",
            "mask_dir": None if source_path(source_root, mask_dir) is None else str(mask_dir),
            "out_path": out_dir / f"{inv.case_id}.nii.gz",
            "source_root": source_root,
        }))
    return run_per_case(import_case_masks, jobs, threads=threads, desc="masks", not_run=skipped)
