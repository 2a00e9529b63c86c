"""The method's pure inputs (reg2rg.transforms): normalisation, exact area resizing, the global input, the region
texture and geometry inputs and their LFD-off version, and the stored sums and counts round trips, each against
its definition (torch's area interpolation in float64)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reg2rg.constants import OUTSIDE_HU
from reg2rg.transforms import (
    bbox,
    body_box,
    box_start_size,
    geometry_counts,
    geometry_from_counts,
    global_from_sums,
    global_input,
    global_sums,
    normalize_hu,
    region_geometry_input,
    region_lfd_off_input,
    region_texture_input,
    resize_area,
    size_zyx,
)


def _area(a, size) -> torch.Tensor:
    """The reference: torch's own area interpolation in float64."""
    t = torch.as_tensor(np.asarray(a), dtype=torch.float64)[None, None]
    return F.interpolate(t, size=size_zyx(size), mode="area")[0, 0]


def _unit(t):
    return (torch.clamp(t, -1000, 200) + 400) / 600


# --------------------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------------------

def test_normalize_hu_maps_the_window_to_unit_range():
    hu = np.array([-3024, -1024, -1000, -400, 0, 200, 1500], dtype=np.int16)
    out = normalize_hu(hu)
    assert out.dtype == np.float32
    assert out[2] == -1.0 and out[5] == 1.0 and out[3] == 0.0
    assert out[0] == out[1] == -1.0 and out[6] == 1.0  # clamped
    assert out[4] == pytest.approx(400 / 600)
    t = normalize_hu(torch.tensor(hu))
    assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(out))


@pytest.mark.parametrize("shape, size", [
    ((20, 30, 40), (17, 33, 11)),      # x down, y up, z down
    ((7, 5, 3), (64, 48, 16)),         # all up, non-integer ratios
    ((100, 90, 31), (64, 64, 16)),     # all down
    ((16, 64, 64), (64, 64, 16)),      # identity
    ((70, 200, 9), (256, 130, 64)),    # long axis banded, short axis dense
])
def test_resize_area_equals_torch_area_interpolation(shape, size):
    a = np.random.default_rng(0).normal(0, 300, shape).astype(np.float32)
    out = resize_area(a, size)
    assert out.shape == size_zyx(size) and out.dtype == torch.float32
    assert torch.allclose(out.double(), _area(a, size), atol=2e-4, rtol=1e-6)


def test_geometry_of_a_boxed_mask_equals_full_frame_resize():
    rng = np.random.default_rng(1)
    mask = np.zeros((37, 90, 110), dtype=bool)
    mask[5:20, 30:61, 12:50] = rng.random((15, 31, 38)) > 0.3
    size = (48, 40, 24)
    ref = _area(mask.astype(np.float64), size)
    geo = region_geometry_input(mask, size)
    assert geo.shape == (1,) + size_zyx(size)
    assert torch.allclose(geo[0].double(), ref, atol=1e-6)
    # the cache's integer counts give the same numbers
    box = bbox(mask)
    start, _ = box_start_size(box)
    counts, out_start = geometry_counts(mask[box], mask.shape, start, size)
    assert np.issubdtype(counts.dtype, np.integer)
    assert torch.allclose(geometry_from_counts(counts, out_start, mask.shape, size_zyx(size)).double(), ref, atol=1e-6)
    assert not region_geometry_input(np.zeros_like(mask), size).any()


def test_global_sums_round_trip_equals_direct_global_input():
    ct = np.full((30, 80, 90), -1024, dtype=np.int16)
    ct[3:28, 10:70, 5:85] = np.random.default_rng(2).integers(-1010, 1800, (25, 60, 80))
    for size in [(32, 40, 12), (128, 96, 40)]:
        direct = global_input(ct, size)
        body = ct[body_box(ct)]
        ref = _unit(_area(body.astype(np.float64), size))
        assert torch.allclose(direct[0].double(), ref, atol=1e-6)
        sums = global_sums(body, size)
        assert np.issubdtype(sums.dtype, np.integer)
        assert torch.allclose(global_from_sums(sums, body.shape, size_zyx(size)).double(), ref, atol=1e-6)


def test_texture_and_lfd_off_inputs_match_their_definitions():
    rng = np.random.default_rng(3)
    ct = rng.integers(-1100, 1500, (24, 50, 60)).astype(np.int16)
    mask = np.zeros(ct.shape, dtype=bool)
    mask[4:15, 10:30, 20:41] = True
    mask[4:15, 10:30, 20] = False
    ct[mask & (np.arange(60) >= 38)[None, None, :]] = -1010  # in-mask voxels below -1000 HU leave the crop
    size = (32, 24, 16)
    masked = np.where(mask, ct, OUTSIDE_HU).astype(np.float64)
    crop = bbox(mask & (ct > -1000))
    assert crop[2].stop < 41
    tex = region_texture_input(ct, mask, None, size)
    assert torch.allclose(tex[0].double(), _unit(_area(masked[crop], size)), atol=1e-6)
    assert torch.equal(tex, region_texture_input(ct, mask, crop, size))
    off = region_lfd_off_input(ct, mask, size)
    assert torch.allclose(off[0].double(), _unit(_area(masked, size)), atol=1e-6)
    with pytest.raises(ValueError, match="no voxel above"):
        region_texture_input(ct, np.zeros_like(mask), None, size)
