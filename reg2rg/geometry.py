"""Image grids: the one place for what the stages ask of a SimpleITK image's geometry.

A grid is an image's size (voxels), spacing (mm), origin (mm, the first voxel's centre, ITK's LPS world)
and direction (row-major 3 x 3 cosines), all in [x, y, z] order as SimpleITK gives them.

- `grid_record(image)`: an image's (or a header reader's) grid as a JSON-ready dict, the form sidecars and
  records hold it in.
- `same_grid(a, b)`: whether two grid records are one grid, within what header rounding explains.
- `resample_to_reference(image, reference)`: an image put on another grid in physical space, never by array
  index (nearest neighbour for masks); `sitk_interpolator` and `outside_value` are its defaults, shared
  with the other resamplings (reg2rg.ingest).
- `itk_message(err)`: the useful part of an ITK exception, for an error message that names the file.
- `size_triple(value, name)`: a configured grid size or patch size, validated as three positive integers.
"""
from __future__ import annotations

import re

from reg2rg.constants import OUTSIDE_HU
from reg2rg.errors import ConfigError

# Two grids are "the same" when they agree to within these tolerances: spacing relative, direction absolute,
# origin a fraction of the smallest spacing (mm).
SPACING_RTOL = 1e-4
DIRECTION_ATOL = 1e-4
ORIGIN_FRACTION_OF_SPACING = 1e-3


def size_triple(value, name: str) -> tuple[int, int, int]:
    """A size in (x, y, z) order (or one integer for all three) as three positive integers; a ConfigError
    naming `name` otherwise."""
    if isinstance(value, int):
        value = (value, value, value)
    try:
        out = tuple(int(v) for v in value)
    except TypeError as err:
        raise ConfigError(f"{name}: expected three integers (x, y, z), got {value!r}") from err
    if len(out) != 3 or min(out) <= 0:
        raise ConfigError(f"{name}: expected three positive integers (x, y, z), got {value!r}")
    return out


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def grid_record(image, *, float32: bool = False, negative_zero: bool = False) -> dict:
    """Size, spacing, origin and direction of a SimpleITK image (or of an ImageFileReader that has read the
    header), [x, y, z] order, as JSON-ready lists: {"size", "spacing", "origin", "direction"}.

    `float32`: spacing and origin rounded as a NIfTI header stores them. The direction is written without
    "-0.0" (a zero is a zero), unless `negative_zero`: ingest's sidecar keeps the sign as the header has it."""
    import numpy as np

    conv = (lambda v: [float(np.float32(x)) for x in v]) if float32 else _floats
    direction = _floats(image.GetDirection()) if negative_zero else [float(v) + 0.0 for v in image.GetDirection()]
    return {
        "size": [int(s) for s in image.GetSize()],
        "spacing": conv(image.GetSpacing()),
        "origin": conv(image.GetOrigin()),
        "direction": direction,
    }


def same_grid(a: dict, b: dict) -> bool:
    """Whether grid records `a` and `b` (grid_record) are one grid: the same size, spacing within SPACING_RTOL
    of b's, direction within DIRECTION_ATOL, origin within ORIGIN_FRACTION_OF_SPACING of a's smallest
    spacing. (The spacing test is relative to `b`, the origin's to `a`: the order matters at the margin.)"""
    import numpy as np

    if a["size"] != b["size"]:
        return False
    sa = np.asarray(a["spacing"])
    if not np.allclose(sa, b["spacing"], rtol=SPACING_RTOL, atol=0):
        return False
    if not np.allclose(a["direction"], b["direction"], atol=DIRECTION_ATOL, rtol=0):
        return False
    tol = ORIGIN_FRACTION_OF_SPACING * float(np.min(sa))
    return bool(np.all(np.abs(np.subtract(a["origin"], b["origin"])) <= tol))


def sitk_interpolator(interpolator):
    """A SimpleITK interpolator constant from "linear", "nearest" or "bspline" (or a constant, as is)."""
    import SimpleITK as sitk

    if isinstance(interpolator, str):
        table = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
        try:
            return table[interpolator.lower()]
        except KeyError:
            raise ValueError(f"unknown interpolator {interpolator!r}; use one of {', '.join(table)}") from None
    return int(interpolator)


def outside_value(interp: int, default_value=None) -> float:
    """The value a resampling gives outside its input: `default_value`, else 0 for nearest neighbour (masks)
    and -1024 HU (OUTSIDE_HU) otherwise (CT)."""
    import SimpleITK as sitk

    if default_value is not None:
        return float(default_value)
    return 0.0 if interp == sitk.sitkNearestNeighbor else float(OUTSIDE_HU)


def resample_to_reference(image, reference, interpolator="nearest", default_value=None, output_pixel_type=None):
    """Put `image` on `reference`'s grid (size, spacing, origin, direction) in physical space; never by
    array index. `reference`: a SimpleITK image or a grid record (grid_record; no voxels needed).
    `interpolator` as in sitk_interpolator; outside the input: outside_value (0 for nearest). The output
    pixel type is the input's for nearest (a uint8 mask stays uint8) and float32 otherwise, unless
    `output_pixel_type` is given."""
    import SimpleITK as sitk

    interp = sitk_interpolator(interpolator)
    if output_pixel_type is None:
        output_pixel_type = image.GetPixelID() if interp == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    if isinstance(reference, dict):
        size, origin = [int(v) for v in reference["size"]], reference["origin"]
        spacing, direction = reference["spacing"], reference["direction"]
    else:
        size, origin = reference.GetSize(), reference.GetOrigin()
        spacing, direction = reference.GetSpacing(), reference.GetDirection()
    return sitk.Resample(image, size, sitk.Transform(), interp, origin, spacing, direction,
                         outside_value(interp, default_value), output_pixel_type)


# What precedes ITK's own words in an exception line: "ITK ERROR: Class(0x...): " (older builds) or
# "itk::ERROR: Class(0x...): " (SimpleITK 2.x) or "sitk::ERROR: "; the address differs from run to run.
_ITK_PREFIX = re.compile(r"(?:ITK ERROR|itk::ERROR|sitk::ERROR): (?:\w+\(0x[0-9a-fA-F]+\): )?")


def itk_message(err: Exception, *, short: bool = False) -> str:
    """The useful part of an ITK exception's text, for an error message (the caller names the file).

    Default (ingest's messages): every line but SimpleITK's "Exception thrown in ..." and the C++ source
    location lines, each without its ITK prefix (_ITK_PREFIX, with the object's address), joined with "; ", at
    most 400 characters. `short` (the masks' and cache's messages): one line, only what follows the first ITK
    prefix, at most 300 characters (the exception's type name when empty)."""
    if short:
        text = " ".join(str(err).split())
        # "Exception thrown in SimpleITK ReadImage: /path/file.cxx:123: itk::ERROR: Class(0x...): ..."
        found = _ITK_PREFIX.search(text)
        if found:
            text = text[found.end():].strip()
        return text[:300] if text else type(err).__name__
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        if ln.startswith("Exception thrown in SimpleITK") or ln.startswith("/") and ".cxx" in ln:
            continue
        keep.append(_ITK_PREFIX.sub("", ln, count=1) if _ITK_PREFIX.match(ln) else ln)
    text = "; ".join(keep) or str(err)
    return text[:400]
