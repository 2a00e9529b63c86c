"""CT ingestion: any chest CT (DICOM series folder, NIfTI, NRRD, MetaImage; CT-RATE v1 with its metadata CSV
or v2 already in HU) to one canonical int16 HU NIfTI plus a JSON sidecar.

Canonical means: identity direction in ITK's LPS world (x to the patient's left, y posterior, z superior),
spacing exactly the target (default 1 x 1 x 3 mm), the origin at the first voxel centre, int16 HU, -1024
(air) where the output grid leaves the scanned field of view.

Public API, reused by other stages:
- `read_ct(...)` -> (SimpleITK image in HU with no metadata dictionary, info dict)
- `to_canonical(image, interpolator)` and `resample_to_spacing(image, spacing, interpolator)`: pure
  transforms on SimpleITK images (linear for CT, nearest for masks); putting an image on another grid is
  reg2rg.geometry's `resample_to_reference`, as are the grid record and the ITK error text.
- `estimate_air(array)`: the air-value sanity check recorded as `hu_check`.
- `stored_input_layout(path)`: the model `input_layout` that gives the encoder a file's voxels in its stored
  order (the authors' loader's), given how ingest reorients it.
- `ingest(...)`: the whole stage for one scan, cached on the source's sha256 and the options.

No patient identifier (names, ids, dates, UIDs) is logged, written to the sidecar or to the NIfTI header:
headers are read only for geometry and rescale values, DICOM UIDs appear only as short hashes, and the
output is written from a bare array plus geometry. Nor is the source's path (a folder may be named after the
patient): the sidecar's `source` has the sha256 of the source files and, given the data set root
(`source_root`, `--source-root`; the workflow passes the configured root), the path relative to it; logs name
the source the same way and outputs by file name. Error messages still name the file, for the user to act.

Bad input is refused with InputError, never turned into a wrong volume: truncated files, non-finite voxels
(unless `fill_nonfinite`), a single slice, air not near -1000 HU (unless `accept_implausible_hu`), two CT
series with the same slice count in one folder (choose with `series_uid`), an output that is the input.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import re
import time
from pathlib import Path

from reg2rg.constants import OUTSIDE_HU
from reg2rg.files import (atomic_path, check_nifti_complete, refuse_overwrite, relative_source,
                          sha256_files as _sha256_files, write_json_atomic)
from reg2rg.errors import InputError
from reg2rg.geometry import grid_record, itk_message, outside_value, sitk_interpolator

log = logging.getLogger(__name__)

DEFAULT_SPACING = (1.0, 1.0, 3.0)
# Air after conversion to HU must fall in this range, else the intensities are not plausible CT in HU.
AIR_HU_RANGE = (-1100.0, -900.0)
INT16_MIN, INT16_MAX = -32768, 32767
# DICOM slice spacing checks, relative to the series' median spacing.
GAP_FACTOR = 1.5  # a step above 1.5x the median is a missing slice
JITTER_TOLERANCE = 0.01  # steps within 1% of the median count as uniform (real series jitter a little)
DUPLICATE_MM = 0.01  # two slices closer than this along the normal are at the same position
# Directions closer to identity than this (per matrix element) are snapped to identity without resampling.
DIRECTION_TOLERANCE = 1e-4
# Output NIfTI gzip level: 1 is several times faster than 6 for a few percent more bytes.
GZIP_LEVEL = 1

FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
# CT-RATE metadata columns this module reads (and only these: the CSV also holds patient data).
CTRATE_REQUIRED = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")
CTRATE_OPTIONAL = ("ImageOrientationPatient", "ImagePositionPatient")
# DICOM tags read from each file's header (stop before pixels): geometry, rescale and grouping only.
_DICOM_TAGS = [
    "SeriesInstanceUID", "Modality", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "Rows", "Columns", "RescaleSlope", "RescaleIntercept", "NumberOfFrames", "ImageType", "SeriesDescription",
]


# --------------------------------------------------------------------------------------------- helpers
def sidecar_path(output_path) -> Path:
    """The JSON sidecar beside an output volume: `x.nii.gz` -> `x.json`."""
    p = Path(output_path)
    name = p.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + ".json")
    raise InputError(p, "the output must be a .nii.gz (or .nii) file")


def short_hash(text: str) -> str:
    """8 hex digits of sha256: how identifiers such as DICOM UIDs may appear in logs and sidecars."""
    return hashlib.sha256(str(text).encode()).hexdigest()[:8]




def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def _floats(values) -> list[float]:
    return [float(v) for v in values]


@contextlib.contextmanager
def _itk_warnings_off():
    """ITK prints warnings (e.g. its own non-uniform slice note) straight to stderr; we check and log
    those conditions ourselves, so silence them while reading."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _strip_metadata(image):
    """Drop the metadata dictionary (it can hold header fields with identifiers) in place."""
    for key in image.GetMetaDataKeys():
        image.EraseMetaData(key)
    return image


# ------------------------------------------------------------------------------------ pure transforms
def _grid_count(extent: float, step: float) -> int:
    """Voxel centres from 0 to `extent` every `step`: floor(extent / step) + 1, where a last centre within
    1/1000 of a voxel past the end still counts (so that a spacing differing in the 6th digit keeps it)."""
    return int(math.floor(extent / step + 1e-3)) + 1


def to_canonical(image, interpolator="linear", default_value=None):
    """Return `image` with identity direction in ITK's LPS world, voxels unchanged.

    Axis permutations and flips (any scan acquired along the body axes) are exact: SimpleITK.DICOMOrient
    to "LPS" moves voxels and the origin to the new first voxel. A direction within DIRECTION_TOLERANCE of
    identity is snapped. An oblique image (gantry tilt, rotated acquisition) is resampled onto an
    axis-aligned grid with the same spacing covering it (`interpolator`: "linear" for CT, "nearest" for
    masks; outside: `default_value`, default -1024 for linear and 0 for nearest). The input is not changed.
    """
    import numpy as np
    import SimpleITK as sitk

    identity = np.eye(3)
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if np.abs(d - identity).max() <= DIRECTION_TOLERANCE:
        if np.array_equal(d, identity):
            return image
        out = sitk.Image(image)  # copy-on-write: no voxel copy until someone writes to it
        out.SetDirection(tuple(identity.ravel()))
        return out
    out = sitk.DICOMOrient(image, "LPS")
    d = np.asarray(out.GetDirection(), dtype=float).reshape(3, 3)
    if np.abs(d - identity).max() <= DIRECTION_TOLERANCE:
        out.SetDirection(tuple(identity.ravel()))
        return out
    # Oblique: an axis-aligned grid over the bounding box of the voxel centres, same spacing.
    size = np.asarray(out.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)],
                       dtype=float)
    phys = np.array([out.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    spacing = np.asarray(out.GetSpacing(), dtype=float)
    lo, hi = phys.min(axis=0), phys.max(axis=0)
    new_size = [_grid_count(h - l, s) for l, h, s in zip(lo, hi, spacing)]
    interp = sitk_interpolator(interpolator)
    pixel = out.GetPixelID() if interp == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    return sitk.Resample(out, new_size, sitk.Transform(), interp, tuple(lo), tuple(spacing),
                         tuple(identity.ravel()), outside_value(interp, default_value), pixel)


def stored_input_layout(path) -> str | None:
    """The model config's `input_layout` under which the model sees the voxels of the image file `path` in
    the order the file stores them (what a loader that takes nibabel's array as it is, like the authors', gives
    the encoder), for a file ingested by its header's geometry (not CT-RATE v1 with its metadata CSV, whose
    ImageOrientationPatient decides). Ingest reorients to LPS by the direction SimpleITK reads from the header:
    "lps" when the stored axes already run to the patient's left, posterior and superior (ingest keeps the
    order); "ras" when they run to right, anterior and superior (ingest reverses x and y; so does a NIfTI with
    an identity sform or qform, a blank header as CT-RATE v1's, which ITK reads as RAS); None for any other
    order (axes permuted, slices stored superior first): no input_layout reproduces it. Reads the header only;
    InputError naming the file when it cannot."""
    import numpy as np
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(path, f"cannot read the image header: {itk_message(err)}") from None
    n = reader.GetDimension()
    d = np.asarray(reader.GetDirection(), dtype=float).reshape(n, n)[:3, :3]
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(d.ravel()))
    return {"LPS": "lps", "RAS": "ras"}.get(code)


def resample_to_spacing(image, spacing, interpolator="linear", default_value=None, output_pixel_type=None):
    """Resample onto a grid with exactly `spacing` (x, y, z mm), same origin (first voxel centre) and direction.

    The output size along each axis is floor(physical extent / spacing) + 1, where the extent is the
    distance between the first and last voxel centres: the output never reaches past the input's last
    voxel centre. `interpolator`: "linear" (CT) or "nearest" (masks), or a SimpleITK constant. Outside
    the input: `default_value` (default -1024 for linear, 0 for nearest). The output pixel type is the
    input's for nearest and float32 for linear (round it yourself), unless `output_pixel_type` is given.
    An input already on that grid is returned as is (cast if needed). Multi-threaded (ITK).
    """
    import SimpleITK as sitk

    target = tuple(float(s) for s in spacing)
    if len(target) != image.GetDimension() or min(target) <= 0:
        raise ValueError(f"spacing must be {image.GetDimension()} positive numbers, got {spacing!r}")
    interp = sitk_interpolator(interpolator)
    if output_pixel_type is None:
        output_pixel_type = image.GetPixelID() if interp == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    in_size, in_spacing = image.GetSize(), image.GetSpacing()
    size = [_grid_count((n - 1) * s_in, s_out) for n, s_in, s_out in zip(in_size, in_spacing, target)]
    if tuple(size) == tuple(in_size) and all(abs(a - b) <= 1e-9 * b for a, b in zip(in_spacing, target)):
        out = image if image.GetPixelID() == output_pixel_type else sitk.Cast(image, output_pixel_type)
        if out is image:
            out = sitk.Image(image)
        out.SetSpacing(target)
        return out
    return sitk.Resample(image, size, sitk.Transform(), interp, image.GetOrigin(), target, image.GetDirection(),
                         outside_value(interp, default_value), output_pixel_type)


def to_int16_hu(array):
    """Round and clip an HU array to int16 (a no-op view for int16 input)."""
    import numpy as np

    a = np.asarray(array)
    if a.dtype == np.int16:
        return a
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, INT16_MIN, INT16_MAX).astype(np.int16)
    f = np.array(a, dtype=np.float32, copy=True)
    np.rint(f, out=f)
    np.clip(f, INT16_MIN, INT16_MAX, out=f)
    return f.astype(np.int16)


def estimate_air(array, max_samples: int = 4_000_000) -> dict:
    """Air value of an HU volume: the 1st percentile of its voxels once constant fill values are left out.

    Scanners fill the corners outside the circular field of view with one constant (-1024, -2048,
    -3024...), some clip air at -1024, and resampling pads with -1024: such a value is a spike in the
    histogram (at least 0.5% of the voxels and over 5 times any value within 3 HU of it) and is left out.
    What remains has air outside the body and in the airways as its darkest part, near -1000 HU with
    noise. Works on a regular subsample of at most `max_samples` voxels. Returns the `hu_check` record.
    """
    import numpy as np

    lo, hi = AIR_HU_RANGE
    a = np.asarray(array).reshape(-1)
    step = max(1, a.size // max_samples)
    sample = a[::step]
    if sample.dtype != np.int16:
        sample = to_int16_hu(sample)
    counts = np.bincount(sample.astype(np.int32) + 32768, minlength=65536)
    result = {"air_hu": None, "fill_values_hu": [], "method": "1st percentile, constant fill values excluded",
              "plausible_range": [lo, hi], "plausible": False}
    total = int(counts.sum())
    if total == 0:
        return result
    padded = np.pad(counts, 3)
    neighbours = np.max([padded[3 + d: 3 + d + counts.size] for d in (-3, -2, -1, 1, 2, 3)], axis=0)
    spikes = np.flatnonzero((counts >= 0.005 * total) & (counts > 5 * neighbours))
    if spikes.size:
        result["fill_values_hu"] = [int(v) - 32768 for v in spikes]
        counts[spikes] = 0
        total = int(counts.sum())
    if total == 0:
        return result
    cum = np.cumsum(counts)
    air = int(np.searchsorted(cum, 0.01 * total, side="left")) - 32768
    result["air_hu"] = float(air)
    result["plausible"] = bool(lo <= air <= hi)
    return result


# ------------------------------------------------------------------------------------------ sources
class _Source:
    """What the input is, found from headers only: format, files (for the sha256) and, for DICOM, the
    chosen series' slices in order and their geometry."""

    def __init__(self, path: Path, fmt: str, files: list[Path], label: str = "the input"):
        self.path = path
        self.format = fmt
        self.files = files
        self.dicom: dict | None = None
        self.label = label  # how logs name the source: its path under the data set root, never an absolute path

    def sha256(self) -> str:
        return _sha256_files(sorted(self.files, key=lambda p: p.name))


def _locate(input_path, series_uid=None, resample_gaps=False, source_root=None) -> _Source:
    path = Path(input_path)
    if not path.exists():
        raise InputError(path, "does not exist")
    label = relative_source(path, source_root) or "the input"
    if path.is_dir():
        src = _scan_dicom_folder(path, series_uid, resample_gaps, label)
        src.label = label
        return src
    if series_uid:
        raise InputError(path, "--series selects a DICOM series in a folder; this input is a single file")
    fmt = _format_of(path)
    if fmt is None:
        if path.suffix.lower() in ("", ".dcm", ".ima"):
            raise InputError(path, "a single file is not a DICOM series: pass the folder that holds the series")
        raise InputError(path, f"unknown image format (expected a DICOM folder or one of {', '.join(FORMATS)})")
    return _Source(path, fmt, [path], label)


def _scan_dicom_folder(folder: Path, series_uid, resample_gaps, label: str = "the input") -> _Source:
    import pydicom
    from pydicom.errors import InvalidDicomError

    entries = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                     key=lambda p: p.name)
    if not entries:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        hint = f" (subfolders are not searched: {', '.join(subdirs[:5])})" if subdirs else ""
        raise InputError(folder, f"empty folder: no DICOM files to read{hint}")
    groups: dict[str, list] = {}
    not_dicom, not_image = 0, 0
    for p in entries:
        if p.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
        except InvalidDicomError:
            not_dicom += 1
            continue
        except Exception as err:  # truncated or malformed header
            raise InputError(p, f"unreadable DICOM header ({type(err).__name__}: {err})") from None
        if "Rows" not in ds or "Columns" not in ds:
            not_image += 1  # structured reports, presentation states...
            continue
        if "LOCALIZER" in [str(t).upper() for t in (ds.get("ImageType") or [])]:
            not_image += 1  # scout images share series with the axial slices on some scanners
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if not groups:
        raise InputError(folder, f"no DICOM image files in the folder ({len(entries)} files: {not_dicom} not "
                                 f"DICOM, {not_image} DICOM without an axial image)")

    def describe(uid):
        files = groups[uid]
        modality = str(files[0][1].get("Modality", "?"))
        text = " ".join(str(files[0][1].get("SeriesDescription", "") or "").split())[:64]
        return f"#{short_hash(uid)} ({modality}, {f'{text!r}, ' if text else ''}{len(files)} files)"

    if series_uid:
        wanted = str(series_uid).strip()
        series_uid = next((u for u in groups if wanted in (u, short_hash(u), f"#{short_hash(u)}")), wanted)
        if series_uid not in groups:
            raise InputError(folder, f"no series with the requested SeriesInstanceUID (#{short_hash(series_uid)}); "
                                     f"the folder holds {', '.join(describe(u) for u in groups)}")
        chosen = series_uid
        why = "requested"
    else:
        ct = [u for u in groups if str(groups[u][0][1].get("Modality", "CT")).upper() == "CT"]
        if not ct:
            raise InputError(folder, f"no CT series in the folder; it holds {', '.join(describe(u) for u in groups)}")
        ranked = sorted(ct, key=lambda u: (-len(groups[u]), short_hash(u)))
        tied = [u for u in ranked if len(groups[u]) == len(groups[ranked[0]])]
        if len(tied) > 1:
            raise InputError(folder, f"{len(tied)} CT series with {len(groups[tied[0]])} slices each, so none is "
                                     f"the one to read: {', '.join(describe(u) for u in tied)}; choose one with "
                                     "--series (its #hash as listed, or its SeriesInstanceUID)")
        chosen = ranked[0]
        why = "the CT series with the most slices" if len(ct) > 1 else "the only CT series"
    if len(groups) > 1 or series_uid:
        others = [describe(u) for u in groups if u != chosen]
        log.info("%s: %d series; using %s, %s%s", label, len(groups), describe(chosen), why,
                 f" (others: {', '.join(others)})" if others else "")
    items = groups[chosen]
    src = _Source(folder, "dicom", [p for p, _ in items])
    src.dicom = _dicom_geometry(folder, items, resample_gaps)
    src.dicom["series"] = f"#{short_hash(chosen)}"
    src.dicom["series_choice"] = why
    src.dicom["series_in_folder"] = len(groups)
    if not_dicom:
        log.debug("%s: %d files that are not DICOM were skipped", label, not_dicom)
    return src


def _dicom_geometry(folder: Path, items, resample_gaps: bool) -> dict:
    """Order the slices along the normal and check them: one orientation, no duplicate positions, no
    missing slices, uniform spacing (1% jitter allowed), no shear. Raises InputError naming the files."""
    import numpy as np

    if len(items) == 1:
        p, ds = items[0]
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            return {"multiframe": True, "files": [p], "slices": frames}
        raise InputError(folder, f"the series has a single slice ({p.name}); a 3D CT series is needed")
    first_p, first = items[0]
    for p, ds in items:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise InputError(p, f"DICOM slice without {tag}: cannot place it in the volume")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(p, "multi-frame file inside a multi-file series is not supported")
    iop = np.array(_floats(first.ImageOrientationPatient))
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise InputError(first_p, f"ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors")
    for p, ds in items:
        if np.abs(np.array(_floats(ds.ImageOrientationPatient)) - iop).max() > 1e-4:
            raise InputError(folder, f"slices with different orientations ({first_p.name} and {p.name}): "
                                     "not one volume")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns) or \
                np.abs(np.array(_floats(ds.PixelSpacing)) - np.array(_floats(first.PixelSpacing))).max() > 1e-4:
            raise InputError(folder, f"slices with different sizes or pixel spacings ({first_p.name} and "
                                     f"{p.name}): not one volume")
    pos = np.array([_floats(ds.ImagePositionPatient) for _, ds in items])
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    files = [items[i][0] for i in order]
    dsets = [items[i][1] for i in order]
    pos, proj = pos[order], proj[order]
    steps = np.diff(proj)
    dup = np.flatnonzero(steps < DUPLICATE_MM)
    if dup.size:
        i = int(dup[0])
        raise InputError(folder, f"duplicate slices: {files[i].name} and {files[i + 1].name} are at the same "
                                 f"position ({proj[i]:.3f} mm along the slice normal)"
                                 + (f"; {dup.size} duplicate pairs in all" if dup.size > 1 else ""))
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    uneven = np.flatnonzero(np.abs(steps - median) > JITTER_TOLERANCE * median)
    if gaps.size and not resample_gaps:
        i = int(gaps[0])
        raise InputError(folder, f"missing slice between {files[i].name} and {files[i + 1].name}: they are "
                                 f"{steps[i]:.3f} mm apart where the series' slice spacing is {median:.3f} mm"
                                 + (f" ({gaps.size} gaps in all)" if gaps.size > 1 else "")
                                 + "; pass --resample-gaps to fill gaps by interpolation")
    if uneven.size and not resample_gaps:
        i = int(uneven[0])
        raise InputError(folder, f"non-uniform slice spacing: {files[i].name} and {files[i + 1].name} are "
                                 f"{steps[i]:.3f} mm apart where the median spacing is {median:.3f} mm (more than "
                                 f"{JITTER_TOLERANCE:.0%} off); pass --resample-gaps to resample onto a uniform grid")
    # Shear (gantry tilt): the slice origins must lie on a line along the normal.
    offsets = pos - pos[0]
    inplane = offsets - np.outer(offsets @ normal, normal)
    shift = np.linalg.norm(inplane, axis=1)
    pixel = min(_floats(first.PixelSpacing))
    if shift.max() > 0.5 * pixel:
        i = int(np.argmax(shift))
        raise InputError(folder, f"slice origins drift sideways ({shift[i]:.2f} mm at {files[i].name}): a sheared "
                                 "series (gantry tilt?) is not supported")
    slopes = {(float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)) for ds in dsets}
    return {
        "multiframe": False,
        "files": files,
        "slices": len(files),
        "positions": proj.tolist(),
        "origin": pos[0].tolist(),
        "row": row.tolist(),
        "col": col.tolist(),
        "normal": normal.tolist(),
        "pixel_spacing": _floats(first.PixelSpacing),  # [between rows (y), between columns (x)]
        "median_step": median,
        "uniform": not (gaps.size or uneven.size),
        "gaps": int(gaps.size),
        "max_jitter_mm": float(np.abs(steps - median).max()) if steps.size else 0.0,
        "rescale": sorted(slopes),
    }


def _read_dicom(src: _Source, steps: list):
    import numpy as np
    import SimpleITK as sitk

    g = src.dicom
    if g["multiframe"]:
        try:
            with _itk_warnings_off():
                img = sitk.ReadImage(str(g["files"][0]))
        except RuntimeError as err:
            raise InputError(g["files"][0], f"cannot read the multi-frame DICOM: {itk_message(err)}") from None
        steps.append({"step": "read", "what": "multi-frame DICOM", "frames": g["slices"]})
        steps.append({"step": "rescale", "by": "DICOM RescaleSlope/RescaleIntercept, applied once by the reader"})
        return _strip_metadata(img)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in g["files"]])
    rescale = g["rescale"]
    if len(rescale) > 1 or any(s != round(s) or i != round(i) for s, i in rescale):
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        with _itk_warnings_off():
            img = reader.Execute()
    except RuntimeError as err:
        raise InputError(src.path, f"cannot read the DICOM pixel data: {itk_message(err)}") from None
    _strip_metadata(img)
    steps.append({"step": "read", "what": "DICOM series", "slices": g["slices"], "series": g["series"],
                  "max_slice_jitter_mm": round(g["max_jitter_mm"], 6)})
    # GDCM applies each file's RescaleSlope/RescaleIntercept while reading; nothing here applies it again.
    steps.append({"step": "rescale", "by": "DICOM RescaleSlope/RescaleIntercept, applied once by the reader",
                  "slope_intercept": [list(r) for r in rescale]})
    # Geometry from our own ordering (not ITK's): columns of the direction are row, column and normal.
    direction = tuple(np.column_stack([g["row"], g["col"], g["normal"]]).ravel())
    px, py = g["pixel_spacing"][1], g["pixel_spacing"][0]
    pos = np.asarray(g["positions"])
    if g["uniform"]:
        dz = (pos[-1] - pos[0]) / (len(pos) - 1)
        img.SetSpacing((px, py, float(dz)))
    else:
        # Missing slices or uneven spacing (--resample-gaps): interpolate linearly along the normal onto a
        # uniform grid from the first to the last slice, its step the one closest to the median step.
        arr = sitk.GetArrayViewFromImage(img)
        intervals = max(1, int(round((pos[-1] - pos[0]) / g["median_step"])))
        dz = (pos[-1] - pos[0]) / intervals
        n = intervals + 1
        z = np.minimum(pos[0] + dz * np.arange(n), pos[-1])
        j = np.clip(np.searchsorted(pos, z, side="right") - 1, 0, len(pos) - 2)
        w = ((z - pos[j]) / (pos[j + 1] - pos[j])).astype(np.float32)
        out = np.empty((n,) + arr.shape[1:], dtype=np.float32)
        for k in range(n):
            out[k] = arr[j[k]] * (1 - w[k]) + arr[j[k] + 1] * w[k]
        img = sitk.GetImageFromArray(out)
        img.SetSpacing((px, py, float(dz)))
        steps.append({"step": "fill_gaps", "method": "linear along the slice normal", "from_slices": len(pos),
                      "to_slices": n, "gaps": g["gaps"], "slice_spacing": float(dz)})
        log.warning("%s: %d missing slices or uneven spacing; resampled onto %d uniform slices of %.3f mm",
                    src.label, g["gaps"], n, dz)
    img.SetOrigin(tuple(g["origin"]))
    img.SetDirection(direction)
    return img


def _read_file(src: _Source):
    import SimpleITK as sitk

    path = src.path
    if src.format == "nifti":
        check_nifti_complete(path)
    try:
        with _itk_warnings_off():
            img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, f"cannot read the {src.format} image: {itk_message(err)}") from None
    header = {k: img.GetMetaData(k) for k in ("scl_slope", "scl_inter") if img.HasMetaDataKey(k)}
    _strip_metadata(img)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"{img.GetNumberOfComponentsPerPixel()} components per voxel; a CT has one")
    if img.GetDimension() == 4:
        if img.GetSize()[3] != 1:
            raise InputError(path, f"a 4D image with {img.GetSize()[3]} volumes; expected one 3D CT")
        img = _strip_metadata(sitk.Extract(img, list(img.GetSize()[:3]) + [0], [0, 0, 0, 0]))
    if img.GetDimension() != 3:
        raise InputError(path, f"a {img.GetDimension()}D image; expected a 3D CT")
    if min(img.GetSize()) < 2:
        raise InputError(path, f"size {'x'.join(map(str, img.GetSize()))} voxels: a single slice is not a 3D CT "
                               "(at least 2 voxels along every axis are needed)")
    if src.format == "nifti":
        img = _restore_nifti_nonfinite(path, img)
    return img, header


def _restore_nifti_nonfinite(path: Path, img):
    """ITK's NIfTI reader turns NaN voxels into 0 without a word (0 HU: soft tissue). For a float NIfTI,
    find the non-finite voxels with nibabel and put NaN back, so that _check_finite sees them."""
    import numpy as np
    import SimpleITK as sitk

    if img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return img
    import nibabel as nib

    raw = np.asarray(nib.load(str(path)).dataobj)
    bad = ~np.isfinite(raw.reshape(raw.shape[:3]).T)  # nibabel [x, y, z] -> SimpleITK's [z, y, x]
    if not bad.any():
        return img
    arr = sitk.GetArrayFromImage(img)
    arr[bad] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


# ------------------------------------------------------------------------------------------ CT-RATE
def _parse_numbers(text, column: str, csv_path, name: str) -> list[float]:
    try:
        nums = [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", str(text))]
    except ValueError:
        nums = []
    if not nums:
        raise InputError(csv_path, f"row {name!r}: cannot read numbers from {column} = {text!r}")
    return nums


def ctrate_metadata(csv_path, volume_name: str) -> dict:
    """The CT-RATE v1 metadata of one volume, parsed: slope, intercept, spacing [x, y, z] and, where the CSV
    has them, orientation (6 numbers) and position (3). Only these columns are read (the CSV also holds
    patient data). Looks the row up by file name; InputError naming the CSV when absent or malformed."""
    csv_path = Path(csv_path)
    stem = re.sub(r"\.(nii\.gz|nii|nrrd|mha)$", "", volume_name)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CTRATE_REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(csv_path, f"not a CT-RATE metadata CSV: missing columns {', '.join(missing)}")
            row = None
            for r in reader:
                v = r["VolumeName"]
                if v == volume_name or re.sub(r"\.(nii\.gz|nii|nrrd|mha)$", "", v) == stem:
                    row = r
                    break
    except OSError as err:
        raise InputError(csv_path, f"cannot read the metadata CSV ({err.strerror})") from None
    if row is None:
        raise InputError(csv_path, f"no row with VolumeName {volume_name!r}")
    slope = _parse_numbers(row["RescaleSlope"], "RescaleSlope", csv_path, volume_name)[0]
    intercept = _parse_numbers(row["RescaleIntercept"], "RescaleIntercept", csv_path, volume_name)[0]
    xy = _parse_numbers(row["XYSpacing"], "XYSpacing", csv_path, volume_name)
    z = _parse_numbers(row["ZSpacing"], "ZSpacing", csv_path, volume_name)[0]
    if len(xy) == 1:
        xy = xy * 2
    spacing = [xy[0], xy[1], z]
    if slope == 0 or not all(math.isfinite(v) for v in (slope, intercept, *spacing)) or min(spacing) <= 0:
        raise InputError(csv_path, f"row {volume_name!r}: unusable slope {slope}, intercept {intercept} or "
                                   f"spacing {spacing}")
    meta = {"volume_name": row["VolumeName"], "slope": slope, "intercept": intercept, "spacing": spacing,
            "orientation": None, "position": None}
    for column, key, n in (("ImageOrientationPatient", "orientation", 6), ("ImagePositionPatient", "position", 3)):
        text = (row.get(column) or "").strip()
        if text and text.lower() not in ("nan", "none", "[]"):
            nums = _parse_numbers(text, column, csv_path, volume_name)
            if len(nums) != n:
                raise InputError(csv_path, f"row {volume_name!r}: {column} needs {n} numbers, got {text!r}")
            meta[key] = nums
    return meta


def _apply_ctrate(img, meta: dict, header: dict, path: Path, steps: list):
    """Rescale raw stored values to HU and set the geometry, as CT-RATE's own fix did for the v2 files:
    spacing (XYSpacing[0], XYSpacing[1], ZSpacing); origin ImagePositionPatient; direction columns the row
    and column cosines of ImageOrientationPatient and their cross product."""
    import numpy as np
    import SimpleITK as sitk

    slope_h = float(header.get("scl_slope", "0") or 0)
    inter_h = float(header.get("scl_inter", "0") or 0)
    if (math.isfinite(slope_h) and slope_h not in (0.0, 1.0)) or (math.isfinite(inter_h) and inter_h != 0.0):
        raise InputError(path, f"the NIfTI header already scales the voxels (scl_slope {slope_h}, scl_inter "
                               f"{inter_h}); applying the metadata's RescaleSlope/RescaleIntercept as well would "
                               "rescale twice")
    slope, intercept = meta["slope"], meta["intercept"]
    raw = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(raw.dtype, np.integer) and slope == round(slope) and intercept == round(intercept):
        hu = raw.astype(np.int32)
        if slope != 1:
            hu *= int(slope)
        hu += int(intercept)
        if hu.size and INT16_MIN <= hu.min() and hu.max() <= INT16_MAX:
            hu = hu.astype(np.int16)
    else:
        hu = np.multiply(raw, np.float32(slope), dtype=np.float32)
        hu += np.float32(intercept)
    out = sitk.GetImageFromArray(hu)
    out.SetSpacing(tuple(meta["spacing"]))
    out.SetOrigin(tuple(meta["position"]) if meta["position"] else img.GetOrigin())
    if meta["orientation"]:
        row, col = np.array(meta["orientation"][:3]), np.array(meta["orientation"][3:])
        out.SetDirection(tuple(np.column_stack([row, col, np.cross(row, col)]).ravel()))
    else:
        out.SetDirection(img.GetDirection())
    steps.append({"step": "rescale", "by": "CT-RATE metadata", "slope": slope, "intercept": intercept})
    steps.append({"step": "set_geometry", "by": "CT-RATE metadata", "spacing": meta["spacing"],
                  "orientation": "metadata" if meta["orientation"] else "header",
                  "position": "metadata" if meta["position"] else "header"})
    return out


# ------------------------------------------------------------------------------------------ reading
def _check_options(input_path, metadata_csv, already_hu, src: _Source) -> None:
    if metadata_csv and already_hu:
        raise InputError(input_path, "--metadata and --already-hu contradict each other: the metadata CSV's "
                                     "RescaleSlope/RescaleIntercept convert raw CT-RATE v1 values, and applying "
                                     "them to a volume already in HU (CT-RATE v2 *_fixed) corrupts it; pass one")
    if metadata_csv and src.format == "dicom":
        raise InputError(input_path, "--metadata is for CT-RATE NIfTI volumes; a DICOM series carries its own "
                                     "rescale and geometry")


def _check_finite(img, src: _Source, fill_nonfinite, steps: list):
    """Refuse NaN or infinite voxels (a resampled NaN spreads; cast to int16 it becomes 0 HU, soft tissue),
    or, with `fill_nonfinite` (HU), replace them by that value and record the step."""
    import numpy as np
    import SimpleITK as sitk

    if img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return img
    arr = sitk.GetArrayViewFromImage(img)
    bad = ~np.isfinite(arr)
    n = int(np.count_nonzero(bad))
    if n == 0:
        return img
    what = "all" if n == arr.size else f"{n} of {arr.size}"
    if fill_nonfinite is None:
        raise InputError(src.path, f"{what} voxels are not finite (NaN or infinite): not a CT in HU; pass "
                                   "--fill-nonfinite HU (e.g. -1024, air; in the workflow "
                                   "datasets.<name>.ingest.fill_nonfinite) to replace them")
    fill = float(fill_nonfinite)
    if not math.isfinite(fill):
        raise InputError(src.path, f"--fill-nonfinite must be a finite HU value, got {fill_nonfinite!r}")
    out = sitk.GetImageFromArray(np.where(bad, np.float32(fill), arr).astype(np.float32))
    out.CopyInformation(img)
    steps.append({"step": "fill_nonfinite", "voxels": n, "hu": fill})
    log.warning("%s: %s voxels not finite, set to %g HU (--fill-nonfinite)", src.label, what, fill)
    return out


def _read_pixels(src: _Source, metadata_csv, already_hu, meta=None, fill_nonfinite=None):
    steps: list = []
    if src.format == "dicom":
        img = _read_dicom(src, steps)
        original = grid_record(img, negative_zero=True)
    else:
        img, header = _read_file(src)
        steps.append({"step": "read", "what": src.format})
        if metadata_csv:
            meta = meta or ctrate_metadata(metadata_csv, src.path.name)
            img = _apply_ctrate(img, meta, header, src.path, steps)
        elif already_hu:
            steps.append({"step": "rescale", "by": "none: already in HU (--already-hu)"})
        else:
            steps.append({"step": "rescale", "by": "image header (scl_slope/scl_inter where present)"})
        original = grid_record(img, negative_zero=True)  # for CT-RATE v1: the geometry from the metadata, the header's is unusable
    img = _check_finite(img, src, fill_nonfinite, steps)
    return img, original, steps


def read_ct(input_path, metadata_csv=None, already_hu=False, series_uid=None, resample_gaps=False,
            fill_nonfinite=None, source_root=None):
    """Read a CT in HU, in its own orientation and spacing (DICOM geometry from the slice positions;
    CT-RATE v1 geometry from the metadata). Returns (SimpleITK image without metadata dictionary, info)
    where info has `source` (path, format, sha256, size, spacing, origin, direction, plus `dicom` details
    for a series) and `steps`. Raises InputError naming the file and the problem."""
    src = _locate(input_path, series_uid, resample_gaps, source_root)
    _check_options(input_path, metadata_csv, already_hu, src)
    img, original, steps = _read_pixels(src, metadata_csv, already_hu, fill_nonfinite=fill_nonfinite)
    return img, {"source": _source_record(src, original, src.sha256(), source_root), "steps": steps}


def _source_record(src: _Source, original: dict, sha: str, source_root=None) -> dict:
    """Where the scan came from, without an absolute path: the sha256 of its files and, when a data set root
    is given and holds it, its path relative to that root (else null)."""
    rec = {"path": relative_source(src.path, source_root), "format": src.format, "sha256": sha, **original}
    if src.dicom is not None:
        g = src.dicom
        rec["dicom"] = {"series": g["series"], "series_choice": g["series_choice"],
                        "series_in_folder": g["series_in_folder"], "slices": g["slices"],
                        "files": len(g["files"])}
        if not g.get("multiframe"):
            rec["dicom"].update({"slice_spacing_median": g["median_step"], "uniform": g["uniform"],
                                 "gaps": g["gaps"], "max_jitter_mm": g["max_jitter_mm"]})
    return rec


# ------------------------------------------------------------------------------------------ ingest
def _write_nifti(arr16, reference, path: Path) -> None:
    """Write an int16 [z, y, x] array with `reference`'s geometry as a NIfTI with nothing else in its
    header: the image is built from the bare array, so no metadata dictionary can reach the file. SimpleITK
    writes it uncompressed, then it is gzipped at GZIP_LEVEL with a zero timestamp (fast, and the same
    input gives byte-identical output)."""
    import gzip
    import shutil

    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr16)
    img.SetSpacing(reference.GetSpacing())
    img.SetOrigin(reference.GetOrigin())
    img.SetDirection(reference.GetDirection())
    if not path.name.endswith(".gz"):
        sitk.WriteImage(img, str(path), useCompression=False)
        return
    raw = path.with_name(path.name[: -len(".gz")])
    try:
        sitk.WriteImage(img, str(raw), useCompression=False)
        del img
        with open(raw, "rb") as fin, open(path, "wb") as fout:
            with gzip.GzipFile(filename="", mode="wb", fileobj=fout, compresslevel=GZIP_LEVEL, mtime=0) as gz:
                shutil.copyfileobj(fin, gz, 1 << 22)
    finally:
        raw.unlink(missing_ok=True)


def _cached(output: Path, sidecar: Path, sha: str, options: dict, version: str, rel: str | None) -> dict | None:
    if not (output.is_file() and sidecar.is_file()):
        return None
    try:
        old = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if (old.get("reg2rg_version") != version or old.get("options") != options
            or old.get("source", {}).get("sha256") != sha or old["source"].get("path") != rel):
        return None
    if old.get("output", {}).get("sha256") != _sha256_files([output]):
        log.info("%s: output does not match its sidecar; ingesting again", output.name)
        return None
    return old


def ingest(input_path, output_path, spacing=DEFAULT_SPACING, metadata_csv=None, already_hu=False,
           series_uid=None, resample_gaps=False, fill_nonfinite=None, accept_implausible_hu=False,
           source_root=None) -> dict:
    """Ingest one CT into a canonical int16 HU NIfTI (`output_path`, .nii.gz) plus its JSON sidecar
    (same name, .json); return the sidecar dict. Skips the work and returns the existing sidecar when it
    records the same source sha256, target spacing, options and reg2rg version (and the output file is
    the one it describes).

    Refused with InputError (nothing written): an output that is the input; non-finite voxels unless
    `fill_nonfinite` gives the HU to put there; a single slice; air outside AIR_HU_RANGE after conversion
    (not CT in HU: a missing or double rescale, a constant volume) unless `accept_implausible_hu`, then it is
    a warning. `source_root`: the data set root; the sidecar and logs name the source by its path relative
    to it (else by its sha256 only), never by an absolute path."""
    import numpy as np
    import SimpleITK as sitk

    from reg2rg import __version__

    t0 = time.perf_counter()
    output = Path(output_path)
    side = sidecar_path(output)
    target = [float(s) for s in spacing]
    if len(target) != 3 or min(target) <= 0:
        raise InputError(output, f"target spacing must be 3 positive numbers, got {spacing!r}")
    refuse_overwrite({"input": input_path, "--metadata": metadata_csv}, {"output": output, "its sidecar": side})
    src = _locate(input_path, series_uid, resample_gaps, source_root)
    _check_options(input_path, metadata_csv, already_hu, src)
    meta = ctrate_metadata(metadata_csv, src.path.name) if metadata_csv else None
    options = {
        "target_spacing": target,
        "already_hu": bool(already_hu),
        "series": src.dicom["series"] if series_uid and src.dicom else None,
        "resample_gaps": bool(resample_gaps),
        "fill_nonfinite": None if fill_nonfinite is None else float(fill_nonfinite),
        "accept_implausible_hu": bool(accept_implausible_hu),
        "ctrate_metadata": None if meta is None else {k: v for k, v in meta.items() if k != "volume_name"},
    }
    sha = src.sha256()
    old = _cached(output, side, sha, options, __version__, relative_source(src.path, source_root))
    if old is not None:
        log.info("%s: up to date (%s), skipped", output.name, side.name)
        return old

    img, original, steps = _read_pixels(src, metadata_csv, already_hu, meta, fill_nonfinite)
    before = img.GetDirection()
    img = to_canonical(img, "linear", OUTSIDE_HU)
    if img.GetDirection() != before:
        steps.append({"step": "reorient", "to": "LPS, identity direction", "from_direction": _floats(before),
                      "resampled": bool(np.abs(np.asarray(before) - np.round(before)).max() > DIRECTION_TOLERANCE)})
    resampled = resample_to_spacing(img, target, "linear", OUTSIDE_HU)
    del img
    if min(resampled.GetSize()) < 2:
        raise InputError(src.path, f"at {'x'.join(f'{t:g}' for t in target)} mm the volume is "
                                   f"{'x'.join(map(str, resampled.GetSize()))} voxels: a single slice is not a 3D CT")
    if resampled.GetSize() != tuple(original["size"]) or list(resampled.GetSpacing()) != original["spacing"]:
        steps.append({"step": "resample", "interpolator": "linear", "spacing": target,
                      "size": list(resampled.GetSize()), "outside_hu": OUTSIDE_HU})
    arr16 = to_int16_hu(sitk.GetArrayViewFromImage(resampled))
    steps.append({"step": "cast", "dtype": "int16", "how": "round, clip to the int16 range"})
    hu = estimate_air(arr16)
    if not hu["plausible"]:
        if hu["air_hu"] is None:
            why = "the volume is constant"
        elif hu["air_hu"] < AIR_HU_RANGE[0]:
            why = "likely rescaled twice (e.g. a CT-RATE v2 *_fixed file given the v1 metadata)"
        else:
            why = "likely a missing rescale (raw stored values, e.g. CT-RATE v1 without its metadata CSV)"
        problem = (f"air is {hu['air_hu']} HU after conversion, outside [{AIR_HU_RANGE[0]:g}, "
                   f"{AIR_HU_RANGE[1]:g}]: not plausible CT in HU; {why}")
        if not accept_implausible_hu:
            raise InputError(src.path, f"{problem}; pass --accept-implausible-hu (in the workflow "
                                       "datasets.<name>.ingest.accept_implausible_hu: true) to ingest it anyway")
        log.warning("%s: %s (accepted: --accept-implausible-hu)", src.label, problem)

    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output, suffix=".nii.gz" if output.name.endswith(".nii.gz") else ".nii") as tmp:
        _write_nifti(arr16, resampled, tmp)
    sidecar = {
        "source": _source_record(src, original, sha, source_root),
        # Geometry as the NIfTI file holds it (float32 origin and spacing).
        "output": {"path": output.name, **grid_record(resampled, float32=True, negative_zero=True), "dtype": "int16",
                   "sha256": _sha256_files([output])},
        "steps": steps,
        "hu_check": hu,
        "options": options,
        "reg2rg_version": __version__,
    }
    write_json_atomic(side, sidecar)
    log.debug("%s: ingested in %.2f s", output.name, time.perf_counter() - t0)
    return sidecar


def cli(args) -> int:
    t0 = time.perf_counter()
    side = ingest(args.input, args.output, spacing=tuple(args.spacing), metadata_csv=args.metadata,
                  already_hu=args.already_hu, series_uid=args.series, resample_gaps=args.resample_gaps,
                  fill_nonfinite=args.fill_nonfinite, accept_implausible_hu=args.accept_implausible_hu,
                  source_root=args.source_root)
    out, source = side["output"], side["source"]
    log.info("%s (%s, sha256 %s) -> %s: %s voxels at %s mm, air %s HU%s, %.1f s", source["path"] or "input",
             source["format"], source["sha256"][:12], Path(args.output).name, "x".join(map(str, out["size"])), "x".join(f"{s:g}" for s in out["spacing"]),
             side["hu_check"]["air_hu"], "" if side["hu_check"]["plausible"] else " (NOT plausible)",
             time.perf_counter() - t0)
    return 0


def ingest_case(source_root=None, **kwargs) -> dict:
    """ingest() for one scan of the workflow: an InputError names the file by its path under the data set
    root (the reason goes into the status table and the manifest, which must not hold absolute paths)."""
    try:
        return ingest(source_root=source_root, **kwargs)
    except InputError as err:
        raise InputError(relative_source(err.path, source_root) or Path(err.path).name, err.problem) from None


def ingest_inventory(inventory, out_dir, source_root, spacing=DEFAULT_SPACING, already_hu=False,
                     metadata: dict | None = None, fill_nonfinite=None, accept_implausible_hu: bool = False,
                     threads: int = 1):
    """Ingest every scan of an inventory (reg2rg.layouts.common.INVENTORY_COLUMNS) into `{out_dir}/{case_id}.nii.gz`.

    Returns `case_id, status, reason` for every scan: a scan that cannot be read, or is refused (non-finite
    voxels, a single slice, air not plausible in HU, two equally long CT series), is recorded with the
    reason (the manifest excludes it with that reason) and the others go on. `source_root`: the data set
    root, which the inventory's `image` paths are relative to; each sidecar names its source relative to
    it. `metadata`: source split -> CT-RATE v1 metadata CSV (the config's `ctrate_metadata`, which may lie
    outside the root and so is not in the inventory); a scan of a split with a CSV is rescaled by it, not
    taken as already in HU. `fill_nonfinite`, `accept_implausible_hu`: as for ingest() (the config's
    `datasets.<name>.ingest`), for every scan."""
    from reg2rg.per_scan import run_per_case
    from reg2rg.layouts.common import source_path

    out_dir = Path(out_dir)
    jobs = []
    for inv in inventory.itertuples():
        meta = (metadata or {}).get(inv.source_split) or None
        jobs.append((inv.case_id, {
            "input_path": source_path(source_root, inv.image),
            "output_path": out_dir / f"{inv.case_id}.nii.gz",
            "spacing": tuple(spacing),
            "metadata_csv": meta,
            "already_hu": bool(already_hu) and meta is None,
            "fill_nonfinite": fill_nonfinite,
            "accept_implausible_hu": bool(accept_implausible_hu),
            "source_root": source_root,
        }))
    return run_per_case(ingest_case, jobs, threads=threads, desc="ingest")
