"""Region masks derived from other regions' masks, for regions SAT has no class for.

SAT-DS (the 451 labels SAT is trained on) has no pleura, pleural space or thoracic cavity class: the widest
chest list (DAP Atlas) has the five lung lobes, trachea, bronchie and mediastinal tissue, but nothing between
the lung and the chest wall. The `pleura` region is therefore not prompted but made at import from the lung
masks (reg2rg.segment.sat.import_sat_case):

    pleura = the voxels within `margin_mm` (Euclidean, in mm on the voxel spacing) of a lung voxel,
             outside the lungs, inside the body, and in no other region's mask (heart, mediastinum, bone, ...).

That is the pleural space as far as a CT shows it: the visceral and parietal pleura and whatever lies between
them (an effusion, a pneumothorax, pleural thickening or plaques), plus the chest wall tissue within the
margin. The margin (PLEURA_MARGIN_MM, 20 mm) is what an effusion may push the lung away from the chest wall
and still lie wholly in the shell; a deeper effusion is in the shell where it touches the lung (the part the
model sees) and outside it beyond 20 mm. See docs/ctrg.md for the choice and what it covers on a real CT.

Arrays are in one grid's index order with `spacing` given per array axis (for a SimpleITK array [z, y, x],
the image's spacing reversed). Pure functions: no files, no state.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

PLEURA_MARGIN_MM = 20.0  # how far from the lung surface the pleural space reaches (see the module docstring)
BODY_HU = -500.0  # body: voxels above this (soft tissue, fat, bone, fluid), holes (the lungs, any air) filled


def body_mask(hu: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """The patient's body in a CT array [z, y, x] (axis 0 cranio-caudal): the largest connected component of
    voxels above `threshold` HU, with the holes of each axial slice filled, so that the lungs and any air in
    the chest (a pneumothorax) are inside it and the air around the patient and the table are not."""
    from scipy import ndimage

    solid = np.asarray(hu) > threshold
    if not solid.any():
        return solid
    labels, n = ndimage.label(solid)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        solid = labels == int(np.argmax(sizes))
    out = np.empty_like(solid)
    for z in range(solid.shape[0]):
        out[z] = ndimage.binary_fill_holes(solid[z])
    return out


def pleural_space(lungs: np.ndarray, spacing: Sequence[float], margin_mm: float = PLEURA_MARGIN_MM,
                  body: np.ndarray | None = None, exclude: np.ndarray | None = None) -> np.ndarray:
    """The pleural space around `lungs` (boolean array): voxels outside the lungs whose centre lies within
    `margin_mm` of a lung voxel's centre, the distance measured in mm on `spacing` (per array axis, so an
    anisotropic grid reaches fewer voxels along its coarse axis); restricted to `body` when given and
    outside `exclude` (e.g. the union of the other regions' masks) when given. Empty lungs: an empty mask."""
    from scipy import ndimage

    lungs = np.asarray(lungs, dtype=bool)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != lungs.ndim or min(spacing) <= 0:
        raise ValueError(f"pleural_space: spacing {spacing} does not fit an array of {lungs.ndim} axes")
    if margin_mm <= 0:
        raise ValueError(f"pleural_space: margin_mm must be positive, not {margin_mm}")
    out = np.zeros(lungs.shape, dtype=bool)
    if not lungs.any():
        return out
    # work in the lungs' bounding box grown by the margin: the nearest lung voxel is always inside it
    box = []
    for ax in range(lungs.ndim):
        hit = np.flatnonzero(lungs.any(axis=tuple(a for a in range(lungs.ndim) if a != ax)))
        pad = int(math.ceil(margin_mm / spacing[ax])) + 1
        box.append(slice(max(int(hit[0]) - pad, 0), min(int(hit[-1]) + 1 + pad, lungs.shape[ax])))
    box = tuple(box)
    sub = lungs[box]
    dist = ndimage.distance_transform_edt(~sub, sampling=spacing)
    out[box] = ~sub & (dist <= margin_mm)
    if body is not None:
        out &= np.asarray(body, dtype=bool)
    if exclude is not None:
        out &= ~np.asarray(exclude, dtype=bool)
    return out
