"""SAT (zhaoziheng/SAT, "Large-Vocabulary Segmentation for Medical Images with Text Prompts") as the
segmentation backend: prepare its input, write its jsonl, and import its output onto our ingested grid.

What SAT does with an input (its `Inference_Dataset` / `load_image`, MONAI 1.1, checked against the SAT
repository; see docs/ctrg.md):
  1. LoadImaged (nibabel: array in file order, the NIfTI affine in RAS);
  2. Orientationd(axcodes="RAS" unless the jsonl gives `orientation_code`): flips/permutes the array;
  3. Spacingd(pixdim=(1, 1, 3), bilinear): resamples onto a grid whose first voxel centre is the input's,
     size round(extent / spacing + 1); it is skipped when the affine already has that spacing (MONAI's
     "no significant change" path, tolerance 1e-3);
  4. CropForegroundd(source_key="image"): crops to the bounding box of voxels > 0 of the raw (not yet
     normalised) image, margin 0: per axis [first, last + 1);
  5. after inference, writes `{rcd_dir}/{dataset}/seg_{id}/{label}.nii.gz` per prompt, `seg_{id}.nii.gz`
     (label j+1 summed) and `img_{id}.nii.gz`, each as `Nifti1Image(array, np.eye(4))`: the array of the
     cropped RAS grid with an identity affine. `{id}` is the input file name without `.nii.gz`.

So the geometry of SAT's output is not in its files. We make it exact by writing SAT's input ourselves on
SAT's own grid: the ingested volume resampled to exactly (1, 1, 3) mm (nothing to do for volumes ingested
at that spacing), flipped to RAS, saved with a diagonal RAS affine. Steps 2 and 3 then leave it untouched,
and we compute step 4's crop box on the very array SAT reads. The record of that (`prepare_sat_input`)
is what `restore_sat_mask` inverts: place the cropped array back into the full RAS grid, flip to our LPS
canonical order, and put it on the ingested volume's grid in physical space (nearest neighbour; exact when
the grids coincide).

Two guards make the crop robust: voxels that are exactly 0 are written as -1 (so floating-point noise in a
resampling that a different MONAI version might not skip cannot flip them into the foreground), and the
importer checks every SAT output's shape against the expected crop size (and against `img_{id}.nii.gz`
when present), failing loudly instead of importing a shifted mask.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from reg2rg.constants import REGIONS, region_index
from reg2rg.files import atomic_path, sha256_file as _sha256, write_json_atomic
from reg2rg.errors import ConfigError, InputError
from reg2rg.geometry import grid_record, resample_to_reference

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SAT_SPACING: tuple[float, float, float] = (1.0, 1.0, 3.0)  # SAT's Spacingd pixdim, RAS axes
SAT_ORIENTATION = "RAS"
SAT_MODALITY = "ct"
SPACING_TOLERANCE = 1e-6  # relative: an ingested spacing this close to SAT's is SAT's

# Default SAT prompts per region (unions). Names from SAT's CT vocabulary (SAT-DS label lists: DAP Atlas,
# TotalSegmentator). SAT has no pleura class: "pleura" is not prompted but derived at import (DERIVED_REGIONS).
DEFAULT_REGION_PROMPTS: dict[str, list[str]] = {
    "abdomen": ["liver", "spleen", "stomach", "pancreas", "gallbladder", "kidney", "adrenal gland",
                "abdominal tissue"],
    "bone": ["sternum", "manubrium of sternum", "clavicle", "scapula", "humerus"]
            + [f"rib {i}" for i in range(1, 13)]
            + [f"thoracic vertebrae {i} (t{i})" for i in range(1, 13)],
    "breast": ["breast"],
    "esophagus": ["esophagus"],
    "heart": ["heart"],
    "lung": ["left lung upper lobe", "left lung lower lobe", "right lung upper lobe", "right lung middle lobe",
             "right lung lower lobe"],
    "mediastinum": ["mediastinal tissue", "aorta", "pulmonary artery", "superior vena cava", "thymus",
                    "brachiocephalic trunk", "left brachiocephalic vein", "right brachiocephalic vein"],
    "pleura": [],  # derived from the lung masks (DERIVED_REGIONS), not asked of SAT
    "thyroid": ["thyroid"],
    "trachea and bronchie": ["trachea", "bronchie"],
}
# Regions made at import from other regions' SAT masks (reg2rg.segment.derived) unless the config gives them
# prompts: the pleural space, a shell of PLEURA_MARGIN_MM around the union of the lung lobes.
DERIVED_REGIONS: dict[str, str] = {"pleura": "lung"}


# ------------------------------------------------------------------------------------------------ prompts
def region_prompts(mapping: dict | None = None) -> dict[str, list[str]]:
    """The region -> SAT prompts mapping in REGIONS order (default DEFAULT_REGION_PROMPTS; a partial mapping
    overrides only the regions it names; an empty list leaves a region unsegmented). Prompts are lower-cased
    (SAT lower-cases its queries; its file names are the prompts as given) and must be usable as file names."""
    out = {r: list(p) for r, p in DEFAULT_REGION_PROMPTS.items()}
    for name, prompts in (mapping or {}).items():
        try:
            region = REGIONS[region_index(name)]
        except ValueError as err:
            raise ConfigError(f"segmentation prompts: {err}") from None
        if isinstance(prompts, str) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ConfigError(f"segmentation prompts for {region!r} must be a list of non-empty strings")
        out[region] = [p.strip() for p in prompts]
    for region, prompts in out.items():
        out[region] = [p.lower() for p in prompts]
        bad = [p for p in out[region] if "/" in p or p.startswith(".")]
        if bad:
            raise ConfigError(f"segmentation prompts for {region!r}: {bad} cannot be file names")
    return {r: out[r] for r in REGIONS}


def derived_regions(mapping: dict | None = None) -> tuple[str, ...]:
    """The regions of DERIVED_REGIONS that the config's prompt mapping (as given to region_prompts) does not
    name: those are derived at import. A region the mapping names is SAT's answer to its prompts (a list the
    user chose), or unsegmented for an empty list."""
    named = set()
    for name in (mapping or {}):
        try:
            named.add(REGIONS[region_index(name)])
        except ValueError as err:
            raise ConfigError(f"segmentation prompts: {err}") from None
    return tuple(r for r in REGIONS if r in DERIVED_REGIONS and r not in named)


def all_prompts(prompts: dict[str, list[str]]) -> list[str]:
    """Every distinct prompt, in region order (what SAT is asked for)."""
    seen: dict[str, None] = {}
    for r in REGIONS:
        for p in prompts[r]:
            seen.setdefault(p, None)
    return list(seen)


# ------------------------------------------------------------------------------------------------ intensity
# CTRG-style volumes are 8-bit windowed slices, not HU. SAT expects HU (it clips to [-500, 1000] and crops
# to > 0), so they are mapped back linearly through an assumed window: 0 -> center - width/2, 255 -> center
# + width/2. An approximation (the true window is unknown and saturated values stay saturated).
DEFAULT_WINDOW = {"center": -600.0, "width": 1500.0}  # a lung window: air 0, soft tissue (40 HU) about 236


def windowed_to_hu(array, window: dict | None = None) -> np.ndarray:
    """Approximate HU of 8-bit windowed values (see DEFAULT_WINDOW), as float32."""
    w = {**DEFAULT_WINDOW, **(window or {})}
    lo = float(w["center"]) - float(w["width"]) / 2
    return (np.asarray(array, dtype=np.float32) / 255.0 * float(w["width"]) + lo).astype(np.float32)


# ------------------------------------------------------------------------------------------------ geometry
def lps_to_ras_array(arr_zyx: np.ndarray) -> np.ndarray:
    """A SimpleITK array [z, y, x] of an identity-direction (LPS) image -> nibabel order [i, j, k] with i
    toward the patient's right, j anterior, k superior (RAS)."""
    return np.ascontiguousarray(np.asarray(arr_zyx).transpose(2, 1, 0)[::-1, ::-1, :])


def ras_to_lps_array(arr_ras: np.ndarray) -> np.ndarray:
    """Inverse of lps_to_ras_array."""
    return np.ascontiguousarray(np.asarray(arr_ras)[::-1, ::-1, :].transpose(2, 1, 0))


def ras_affine(size_xyz, spacing, origin_lps) -> np.ndarray:
    """The RAS affine (nibabel) of the RAS-ordered array of an identity-direction LPS image."""
    n = np.asarray(size_xyz, dtype=float)
    s = np.asarray(spacing, dtype=float)
    o = np.asarray(origin_lps, dtype=float)
    a = np.diag([s[0], s[1], s[2], 1.0])
    a[0, 3] = -(o[0] + (n[0] - 1) * s[0])  # RAS index 0 is the LPS index n-1, x_ras = -x_lps
    a[1, 3] = -(o[1] + (n[1] - 1) * s[1])
    a[2, 3] = o[2]
    return a


def foreground_box(arr_ras: np.ndarray) -> tuple[list[int], list[int]]:
    """MONAI CropForeground's box with its defaults (select_fn `> 0`, margin 0): per axis [first, last + 1)
    of the voxels > 0; ([0, 0, 0], [0, 0, 0]) when there are none (as MONAI returns)."""
    fg = np.asarray(arr_ras) > 0
    start, end = [0, 0, 0], [0, 0, 0]
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        line = fg.any(axis=other)
        idx = np.flatnonzero(line)
        if idx.size == 0:
            return [0, 0, 0], [0, 0, 0]
        start[axis], end[axis] = int(idx[0]), int(idx[-1]) + 1
    return start, end




def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data, indent=1)


# ------------------------------------------------------------------------------------------------ prepare
def sat_input_array(volume_path, intensity_mode: str = "hu", window: dict | None = None):
    """The array SAT is given for an ingested volume, and what was done: (int16 array in RAS order
    [i, j, k], RAS affine, steps, LPS geometry of the grid). See the module docstring."""
    import SimpleITK as sitk

    from reg2rg.ingest import resample_to_spacing, to_int16_hu
    from reg2rg.constants import OUTSIDE_HU

    img = sitk.ReadImage(str(volume_path))
    if img.GetDimension() != 3:
        raise InputError(volume_path, f"{img.GetDimension()}-D volume, expected 3-D")
    if np.abs(np.asarray(img.GetDirection()) - np.eye(3).ravel()).max() > 1e-4:
        raise InputError(volume_path, "not a canonical ingested volume (direction is not identity); ingest it first")
    steps = []
    spacing = np.asarray(img.GetSpacing(), dtype=float)
    if np.any(np.abs(spacing - SAT_SPACING) > SPACING_TOLERANCE * np.asarray(SAT_SPACING)):
        fill = 0 if intensity_mode == "windowed" else OUTSIDE_HU
        img = resample_to_spacing(img, SAT_SPACING, "linear", fill)
        steps.append({"step": "resample", "from_spacing": spacing.tolist(), "to_spacing": list(SAT_SPACING),
                      "interpolator": "linear", "size": list(img.GetSize())})
    else:
        img.SetSpacing(SAT_SPACING)  # float32 header noise
    arr = sitk.GetArrayFromImage(img)
    if intensity_mode == "windowed":
        arr = windowed_to_hu(arr, window)
        steps.append({"step": "windowed_to_hu", "window": {**DEFAULT_WINDOW, **(window or {})},
                      "note": "approximate HU from 8-bit windowed values"})
    elif intensity_mode != "hu":
        raise ConfigError(f"intensity mode {intensity_mode!r}: use hu or windowed")
    arr = to_int16_hu(arr)
    zeros = arr == 0
    if zeros.any():
        arr = arr.copy()
        arr[zeros] = -1
        steps.append({"step": "zero_to_minus_one", "voxels": int(zeros.sum()),
                      "why": "SAT crops to voxels > 0; no voxel sits at the threshold"})
    geom = {**grid_record(img), "direction": [float(v) for v in np.eye(3).ravel()]}  # snapped to identity
    return lps_to_ras_array(arr), ras_affine(geom["size"], geom["spacing"], geom["origin"]), steps, geom


def prepare_sat_input(volume_path, out_image, record_path, case_id: str, intensity_mode: str = "hu",
                      window: dict | None = None) -> dict:
    """Write SAT's input for one ingested volume (`out_image`, named `{case_id}.nii.gz`: SAT names its output
    folder after it) and the record of SAT's geometry (`record_path`, JSON). Returns the record."""
    import nibabel as nib

    from reg2rg import __version__

    volume_path, out_image, record_path = Path(volume_path), Path(out_image), Path(record_path)
    if out_image.name != f"{case_id}.nii.gz":
        raise ValueError(f"SAT names its output after the input file: write {case_id}.nii.gz, not {out_image.name}")
    arr, affine, steps, geom = sat_input_array(volume_path, intensity_mode, window)
    start, end = foreground_box(arr)
    out_image.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    with atomic_path(out_image, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))
    record = {
        "format_version": FORMAT_VERSION,
        "case_id": case_id,
        "volume": {"path": str(volume_path), "sha256": _sha256(volume_path)},
        "sat_input": {"path": str(out_image), "sha256": _sha256(out_image), "shape_ras": list(arr.shape),
                      "affine_ras": affine.tolist(), "spacing": list(SAT_SPACING), "orientation": SAT_ORIENTATION,
                      "grid_lps": geom, "steps": steps},
        "crop": {"start": start, "end": end, "how": "MONAI CropForeground: voxels > 0, margin 0, [first, last+1)"},
        "empty_foreground": end == [0, 0, 0],
        "intensity_mode": intensity_mode,
        "reg2rg_version": __version__,
    }
    _write_json(record, record_path)
    return record


def jsonl_line(case_id: str, image: str, prompts: list[str], dataset: str) -> str:
    """One line of SAT's inference jsonl: image, label (prompts), modality, dataset."""
    return json.dumps({"image": str(image), "label": list(prompts), "modality": SAT_MODALITY, "dataset": dataset,
                       "orientation_code": SAT_ORIENTATION, "id": case_id})


# ------------------------------------------------------------------------------------------------ SAT output
def write_sat_output(rcd_dir, dataset: str, case_id: str, masks: dict[str, np.ndarray],
                     image: np.ndarray | None = None) -> Path:
    """Write SAT-format output as SAT's inference engine does: `{rcd_dir}/{dataset}/seg_{id}/{label}.nii.gz`
    per label, `seg_{id}.nii.gz` (label j+1 summed) and, given the cropped image, `img_{id}.nii.gz`; every
    file a Nifti1Image with an identity affine. `masks` maps labels to arrays on SAT's cropped RAS grid."""
    import nibabel as nib

    folder = Path(rcd_dir) / dataset / f"seg_{case_id}"
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {m.shape for m in masks.values()}
    if len(shapes) > 1:
        raise ValueError(f"write_sat_output: masks of different shapes {shapes}")
    results = None
    for j, (label, m) in enumerate(masks.items()):
        pred = (np.asarray(m) > 0).astype(np.float32)
        nib.save(nib.Nifti1Image(pred, np.eye(4)), str(folder / f"{label}.nii.gz"))
        results = pred * (j + 1) if results is None else results + pred * (j + 1)
    if results is not None:
        nib.save(nib.Nifti1Image(results.astype(np.float64), np.eye(4)), str(folder.parent / f"seg_{case_id}.nii.gz"))
    if image is not None:
        nib.save(nib.Nifti1Image(np.asarray(image, dtype=np.float32), np.eye(4)),
                 str(folder.parent / f"img_{case_id}.nii.gz"))
    return folder


def to_sat_grid(mask_image, record: dict) -> np.ndarray:
    """A mask (SimpleITK image with its geometry) as SAT would output it: on the record's SAT input grid
    (nearest neighbour, physical space), in RAS order, cropped to the foreground box. The forward direction
    of restore_sat_mask (used by stand-ins for a SAT run)."""
    import SimpleITK as sitk

    binary = sitk.Cast(mask_image > 0, sitk.sitkUInt8)
    on_grid = resample_to_reference(binary, record["sat_input"]["grid_lps"])  # nearest neighbour, uint8, 0 outside
    ras = lps_to_ras_array(sitk.GetArrayFromImage(on_grid))
    s, e = record["crop"]["start"], record["crop"]["end"]
    return ras[s[0]:e[0], s[1]:e[1], s[2]:e[2]]


def restore_sat_mask(arr_cropped_ras: np.ndarray, record: dict, source: str = "SAT output"):
    """Undo SAT's crop and RAS reordering: a SimpleITK uint8 image on the full SAT input grid in our LPS
    canonical geometry (identity direction), voxel for voxel. Raises InputError if the array's shape is not
    the crop's."""
    import SimpleITK as sitk

    s, e = record["crop"]["start"], record["crop"]["end"]
    expect = tuple(int(b - a) for a, b in zip(s, e))
    arr = np.asarray(arr_cropped_ras)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != expect:
        raise InputError(source, f"shape {list(arr.shape)} is not the crop of SAT's input {list(expect)} "
                                 f"(start {s}, end {e}): SAT preprocessed the input differently from what this "
                                 "importer assumes (see docs/ctrg.md)")
    full = np.zeros(record["sat_input"]["shape_ras"], dtype=np.uint8)
    full[s[0]:e[0], s[1]:e[1], s[2]:e[2]] = arr > 0.5
    g = record["sat_input"]["grid_lps"]
    img = sitk.GetImageFromArray(ras_to_lps_array(full))
    img.SetSpacing(g["spacing"])
    img.SetOrigin(g["origin"])
    img.SetDirection(g["direction"])
    return img


def _read_sat_file(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises several kinds for damaged files
        raise InputError(path, f"cannot read SAT output: {err}") from None
    if not np.allclose(img.affine, np.eye(4)):
        log.warning("%s: affine is not the identity SAT writes; ignored (geometry comes from the record)", path)
    return arr


def find_label_file(seg_dir: Path, label: str) -> Path | None:
    """`{seg_dir}/{label}.nii.gz`, matched case-insensitively."""
    exact = seg_dir / f"{label}.nii.gz"
    if exact.is_file():
        return exact
    if seg_dir.is_dir():
        for p in seg_dir.iterdir():
            if p.name.lower() == f"{label}.nii.gz".lower():
                return p
    return None


def _sat_input_hu(record: dict) -> np.ndarray:
    """SAT's input image (the record's), as an LPS [z, y, x] array on the grid restore_sat_mask returns."""
    path = Path(record["sat_input"]["path"])
    if not path.is_file():
        raise InputError(path, "SAT's input image is gone: the pleura is derived on it (prepare SAT's input again)")
    arr = _read_sat_file(path)
    if list(arr.shape[:3]) != list(record["sat_input"]["shape_ras"]):
        raise InputError(path, f"shape {list(arr.shape)} is not the record's {record['sat_input']['shape_ras']}")
    return ras_to_lps_array(np.asarray(arr))


def derive_region(region: str, unions: dict[str, np.ndarray | None], record: dict,
                  margin_mm: float | None = None) -> tuple[np.ndarray | None, dict]:
    """A DERIVED_REGIONS region from the other regions' masks on SAT's input grid (LPS [z, y, x] arrays):
    the pleura is the pleural space around the lung (reg2rg.segment.derived.pleural_space: `margin_mm`, None for
    PLEURA_MARGIN_MM; inside the body of SAT's input image, outside every other region). None when its source
    region has no mask. Returns the mask and what the sidecar records of it."""
    from reg2rg.segment import derived

    margin_mm = derived.PLEURA_MARGIN_MM if margin_mm is None else float(margin_mm)
    source = DERIVED_REGIONS[region]
    info = {"from": source, "how": "pleural_space", "margin_mm": margin_mm,
            "body_hu": derived.BODY_HU, "excluded": [r for r in REGIONS if r not in (region, source)]}
    lungs = unions.get(source)
    if lungs is None:
        return None, info
    spacing = tuple(float(v) for v in record["sat_input"]["grid_lps"]["spacing"])[::-1]  # [z, y, x]
    others = [m for r, m in unions.items() if r not in (region, source) and m is not None]
    exclude = np.logical_or.reduce(others) if others else None
    body = derived.body_mask(_sat_input_hu(record))
    return derived.pleural_space(lungs, spacing, margin_mm, body=body, exclude=exclude), info


def import_sat_case(volume_path, sat_dir, record_path, prompts: dict[str, list[str]], out_path,
                    work_dir, derive: tuple[str, ...] | None = None, pleura_margin_mm: float | None = None) -> dict:
    """Import one scan's SAT output: for each region the union of its prompts' masks, restored to SAT's input
    grid (record), written to `work_dir/{region}.nii.gz`, then placed on the ingested volume's grid in
    physical space by reg2rg.masks.import_region_masks (one uint16 label file + sidecar at `out_path`).
    The regions in `derive` are made from the others' masks instead (derive_region); they must have no
    prompts. Default: the DERIVED_REGIONS regions without prompts in `prompts` (the workflow passes
    derived_regions(config prompts), so that a user's empty list leaves the pleura unsegmented), the pleura with
    `pleura_margin_mm` (segmentation.pleura_margin_mm; None: PLEURA_MARGIN_MM). The sidecar gains a
    `segmentation` block: backend, prompts per region, the prompts SAT wrote no file for, voxels per prompt, how
    derived regions were made. Raises InputError when SAT's output for the scan is absent or misshapen."""
    import SimpleITK as sitk

    from reg2rg.masks import import_region_masks, sidecar_path

    if derive is None:
        derive = tuple(r for r in REGIONS if r in DERIVED_REGIONS and not prompts.get(r))
    derive = tuple(derive)
    both = [r for r in derive if prompts.get(r)]
    if both:
        raise ConfigError(f"segmentation: {both} both prompted ({[prompts[r] for r in both]}) and derived; "
                          "a region is one or the other")
    record = json.loads(Path(record_path).read_text())
    case_id = record["case_id"]
    if record.get("volume", {}).get("sha256") != _sha256(volume_path):
        raise InputError(record_path, f"was made for another version of {volume_path}; prepare SAT's input again")
    seg_dir = Path(sat_dir) / f"seg_{case_id}"
    if not seg_dir.is_dir():
        raise InputError(seg_dir, "SAT wrote no output folder for this scan (did its run finish?)")
    if record.get("empty_foreground"):
        raise InputError(record["sat_input"]["path"], "no voxel above 0 HU: SAT's foreground crop is empty")
    img_file = Path(sat_dir) / f"img_{case_id}.nii.gz"
    if img_file.is_file():  # SAT's own cropped image: its shape must be the crop we computed
        restore_sat_mask(np.zeros(_read_sat_file(img_file).shape[:3]), record, str(img_file))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path | None] = {}
    info: dict[str, dict] = {}
    unions: dict[str, np.ndarray | None] = {}
    for region in REGIONS:
        union = None
        found, missing, voxels = [], [], {}
        for label in prompts[region]:
            f = find_label_file(seg_dir, label)
            if f is None:
                missing.append(label)
                continue
            arr = _read_sat_file(f)
            restored = sitk.GetArrayFromImage(restore_sat_mask(arr, record, str(f))) > 0
            voxels[label] = int(restored.sum())
            found.append(label)
            union = restored.copy() if union is None else (union | restored)
        info[region] = {"prompts": prompts[region], "found": found, "missing": missing, "voxels": voxels}
        unions[region] = union
    for region in derive:
        unions[region], how = derive_region(region, unions, record, pleura_margin_mm)
        info[region]["derived"] = {**how, "voxels": None if unions[region] is None else int(unions[region].sum())}
    g = record["sat_input"]["grid_lps"]
    for region in REGIONS:
        union = unions[region]
        target = work_dir / f"{region}.nii.gz"
        if union is None:
            files[region] = None
            target.unlink(missing_ok=True)
            continue
        img = sitk.GetImageFromArray(union.astype(np.uint8))
        img.SetSpacing(g["spacing"])
        img.SetOrigin(g["origin"])
        img.SetDirection(g["direction"])
        sitk.WriteImage(img, str(target), useCompression=True)
        files[region] = target
    side = import_region_masks(volume_path, files, out_path)
    side["segmentation"] = {"backend": "sat", "sat_output": str(seg_dir), "record": str(record_path),
                            "regions": info}
    for region in REGIONS:
        if files[region] is None:
            asked = prompts[region]
            if region in derive:
                side["notes"][region] = (f"derived from {DERIVED_REGIONS[region]}, which SAT left without a mask")
            else:
                side["notes"][region] = ("no SAT prompt for this region" if not asked else
                                         f"SAT wrote no file for its prompt(s) {asked}")
    _write_json(side, sidecar_path(out_path))
    return side


# ------------------------------------------------------------------------------------------------ run (one scan)
SAT_DATASET = "reg2rg"  # the jsonl's `dataset` (the workflow's SAT_JSONL_DATASET): SAT writes {rcd_dir}/reg2rg/
SAT_REQUIRED = {"repo": "your checkout of github.com/zhaoziheng/SAT", "checkpoint": "the SAT-Pro/Nano checkpoint",
                "text_encoder_checkpoint": "SAT's text encoder checkpoint",
                "text_encoder_model": "a local folder of FremyCompany/BioLORD-2023-C: SAT builds its text encoder on it "
                                      "and would fetch it from the Hugging Face hub at every start, which fails on an "
                                      "offline compute node; download it once where there is internet with "
                                      "`huggingface-cli download FremyCompany/BioLORD-2023-C --local-dir DIR`"}
# SAT's Knowledge_Encoder loads `AutoModel.from_pretrained(BIOLORD_ID)` (and its tokenizer) with no option to change
# it. transformers takes an id that is an existing folder as a local model: SAT runs in a folder where BIOLORD_ID is
# a link to `text_encoder_model`, with the hub switched off, so that nothing is fetched (sat_workdir).
BIOLORD_ID = "FremyCompany/BioLORD-2023-C"
SAT_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SAT_DEFAULTS = {"vision_backbone": "UNET-L", "text_encoder": "ours", "batchsize_3d": 1, "max_queries": 256,
                "master_port": 29517}
LOG_TAIL_LINES = 30


def sat_settings(settings: dict | None) -> dict:
    """The SAT settings (keys of `datasets.<name>.segmentation.sat`) with defaults filled in and the paths
    absolute. Raises ConfigError naming the `segmentation.sat.*` keys that are unset or point nowhere."""
    settings = dict(settings or {})
    missing = [k for k in SAT_REQUIRED if settings.get(k) in (None, "")]
    if missing:
        raise ConfigError("SAT must be configured: set " + ", ".join(
            f"segmentation.sat.{k} ({SAT_REQUIRED[k]})" for k in missing)
            + " (in a --sat-config file: the keys " + ", ".join(missing) + ")")
    out = {**SAT_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    for k in SAT_REQUIRED:
        out[k] = os.path.abspath(os.path.expanduser(str(out[k])))
        if not os.path.exists(out[k]):
            raise ConfigError(f"segmentation.sat.{k}: {out[k]} does not exist")
    if not os.path.isfile(os.path.join(out["repo"], "inference.py")):
        raise ConfigError(f"segmentation.sat.repo: {out['repo']} has no inference.py (not a SAT checkout)")
    if not os.path.isfile(os.path.join(out["text_encoder_model"], "config.json")):
        raise ConfigError(f"segmentation.sat.text_encoder_model: {out['text_encoder_model']} has no config.json "
                          f"(not a downloaded {BIOLORD_ID})")
    return out


def sat_workdir(work_dir, text_encoder_model) -> Path:
    """The folder SAT runs in: `BIOLORD_ID` there is a link to the local copy of the model (see BIOLORD_ID)."""
    work_dir = Path(work_dir)
    link = work_dir / BIOLORD_ID
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.abspath(text_encoder_model), target_is_directory=True)
    return work_dir


def torchrun_executable() -> str:
    """torchrun beside the current Python (its environment), else on PATH."""
    import shutil

    beside = Path(sys.executable).parent / "torchrun"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("torchrun")
    if found is None:
        raise ConfigError(f"SAT runs with torchrun: none beside {sys.executable} nor on PATH (install torch)")
    return found


def sat_command(settings: dict, jsonl, out_dir, torchrun: str = "torchrun") -> list[str]:
    """SAT's inference command for one GPU (run in sat_workdir, with SAT_OFFLINE_ENV), as the workflow's sat_run
    rule runs it. `settings` as sat_settings returns them."""
    s = {**SAT_DEFAULTS, **settings}
    return [torchrun, "--nproc_per_node=1", "--master_port", str(s["master_port"]),
            os.path.join(str(s["repo"]), "inference.py"),
            "--rcd_dir", str(os.path.abspath(out_dir)), "--datasets_jsonl", str(os.path.abspath(jsonl)),
            "--vision_backbone", str(s["vision_backbone"]), "--checkpoint", str(s["checkpoint"]),
            "--text_encoder", str(s["text_encoder"]),
            "--text_encoder_checkpoint", str(s["text_encoder_checkpoint"]),
            "--max_queries", str(s["max_queries"]), "--batchsize_3d", str(s["batchsize_3d"])]


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of SAT's log, without torchrun's own traceback (ChildFailedError), which would push
    SAT's error out of the tail: SAT's last lines, then torchrun's exit code line."""
    try:
        text = Path(path).read_text(errors="replace").rstrip()
    except OSError:
        return "(no log)"
    launcher = ""
    cut = text.find("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")
    if cut >= 0:
        start = text.rfind("Traceback (most recent call last):", 0, cut)
        codes = [ln.strip() for ln in text[cut:].splitlines() if ln.strip().startswith("exitcode")]
        launcher = f"\n[torchrun: {codes[0]}]" if codes else ""
        text = text[:start if start >= 0 else cut].rstrip()
    return ("\n".join(text.splitlines()[-lines:]) or "(empty log)") + launcher


def run_sat(settings: dict, jsonl, out_dir, log_path) -> None:
    """Run SAT's inference (sat_command, cwd the checkout, output and errors to `log_path`). Raises
    InputError with the log's tail when SAT's U-Net package is missing or SAT fails."""
    import subprocess

    s = sat_settings(settings)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    probe = subprocess.run([sys.executable, "-c", "import dynamic_network_architectures"], cwd=s["repo"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise ConfigError(f"SAT needs its U-Net package (dynamic_network_architectures), which envs/sat.yaml installs: "
                          f"run SAT in that environment, not in {sys.prefix}")
    cmd = sat_command(s, jsonl, out_dir, torchrun_executable())
    cwd = sat_workdir(log_path.parent / "sat_cwd", s["text_encoder_model"])
    log.info("SAT: %s (in %s, log %s)", " ".join(cmd), cwd, log_path)
    with open(log_path, "w") as fh:
        rc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, **SAT_OFFLINE_ENV}).returncode
    if rc != 0:
        raise InputError(log_path, f"SAT's inference failed (exit status {rc}); its log ends:\n{_log_tail(log_path)}")


def run_sat_case(volume_path, out_path, work_dir, settings: dict) -> dict:
    """Segment one ingested volume with SAT, as the workflow's sat_prepare / sat_run / sat_import rules do for
    a data set: SAT's input and record (prepare_sat_input), a one-line jsonl with every prompt of
    region_prompts(settings["prompts"]), SAT's inference (run_sat), and the import (import_sat_case) into
    `out_path` (the masks stage's uint16 label file + sidecar). Returns the sidecar. `settings`: the keys of
    `segmentation.sat` (repo, checkpoint, text_encoder_checkpoint, text_encoder_model, ...), optionally `prompts`,
    `intensity_mode` (hu, the default for ingested scans, or windowed), `windowed_window` and
    `pleura_margin_mm`."""
    settings = dict(settings or {})
    s = sat_settings(settings)
    prompts = region_prompts(settings.get("prompts"))
    volume_path, work_dir = Path(volume_path), Path(work_dir)
    case_id = volume_path.name[:-len(".nii.gz")] if volume_path.name.endswith(".nii.gz") else volume_path.stem
    input_dir = work_dir / "sat_input"
    record = prepare_sat_input(volume_path, input_dir / f"{case_id}.nii.gz", input_dir / f"{case_id}.json", case_id,
                               settings.get("intensity_mode", "hu"), settings.get("windowed_window"))
    if record["empty_foreground"]:
        raise InputError(volume_path, "no voxel above 0 HU: SAT's foreground crop is empty")
    jsonl = work_dir / "sat_input.jsonl"
    jsonl.write_text(jsonl_line(case_id, record["sat_input"]["path"], all_prompts(prompts), SAT_DATASET) + "\n")
    out_dir = work_dir / "sat_output"
    run_sat(s, jsonl, out_dir, work_dir / "sat_run.log")
    return import_sat_case(volume_path, out_dir / SAT_DATASET, input_dir / f"{case_id}.json", prompts, out_path,
                           work_dir / "sat_regions", derive=derived_regions(settings.get("prompts")),
                           pleura_margin_mm=settings.get("pleura_margin_mm"))
