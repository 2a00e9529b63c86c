"""Model-ready inputs: the Reg2RG transforms as pure functions of arrays (global, region texture, region
geometry, LFD off), their forms from the `cache` stage's window sums, and the authors' reference versions.
The Dataset over the cache, the collate, batching and the axis permute to the model's order are in
reg2rg.dataset.

Conventions
- Arrays are `[z, y, x]` (SimpleITK order); every size argument is written `(x, y, z)` like the model config
  and docs/formats.md (paper: (256, 256, 64), i.e. tensors `[64, 256, 256]`). Outputs are float32 torch
  tensors `[1, Z, Y, X]` (channel first), stacked per sample to `[R, 1, Z, Y, X]`.
- The model reads `[..., X, Y, Z]` in the voxel order of the model config's `input_layout`:
  `reg2rg.dataset.to_input_layout` is the one place where data arrays become model input (collate, the
  frozen-ViT feature cache, the benchmarks); the image and its masks always go through it together, so they
  stay aligned.
- Resizing is AREA interpolation: every output voxel is the mean of the input voxels of its window
  `[floor(i * n / m), ceil((i + 1) * n / m))` on each axis, i.e. exactly `F.interpolate(mode="area")`
  (adaptive average pooling), which is what the authors' MONAI `Resize` did (its default mode). Here it is
  computed as three separable passes of small banded matrix products (`_resize_block`), several times faster
  than torch's single-threaded adaptive pooling; for a block that is zero outside a box (a region mask) only
  the box and the outputs it touches are computed. Same numbers to float32 rounding.
- HU are resized first, then clamped to [HU_MIN, HU_MAX] and scaled (x - HU_CENTER) / HU_SCALE, in the
  authors' order (clamping first would change every window that holds bone or air beyond the window).

The method's inputs (docs/method.md, "Local Feature Decoupling (LFD) inputs"), and the frame each lives in:
- global: the volume cropped to the body (bounding box of voxels > -1000 HU), resized.
- texture (LFD): the volume times the region mask, -1024 HU outside it, cropped to the bounding box of the
  masked volume's voxels > -1000 HU (the authors' CropForeground on the masked volume: the region's voxels
  inside the body), resized.
- geometry (LFD): the region mask in the global input's frame (the body crop: the authors cropped the masks
  with the image's box), not cropped to the region, resized; values are the fraction of each output window
  inside the mask, in [0, 1].
- LFD off (ablation): the masked volume (-1024 outside the mask) in the global frame, resized.

Global and geometry inputs are exact window sums divided by window volumes; the `cache` stage stores those
integer sums for the model input size, so the loader only scales them (see `global_from_sums`,
`geometry_from_counts`); textures are resized from the cached native-resolution CT at load time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reg2rg.constants import HU_CENTER, HU_MAX, HU_MIN, HU_SCALE, OUTSIDE_HU, REGIONS
from reg2rg.geometry import size_triple

Box = tuple[slice, slice, slice]

# The paper's model input size (x, y, z).
PAPER_INPUT_SIZE = (256, 256, 64)

# Output rows per banded block in the separable area passes, per axis: small blocks waste fewer products on
# zeros; along y and x larger ones pay less per-block overhead.
_CHUNK = (8, 32, 32)

# Normalised values of HU_MIN and HU_MAX.
_UNIT_LO = (HU_MIN - HU_CENTER) / HU_SCALE
_UNIT_HI = (HU_MAX - HU_CENTER) / HU_SCALE


def _empty(shape) -> torch.Tensor:
    """An uninitialised float32 tensor in numpy-allocated memory: numpy asks the kernel for huge pages on
    large arrays, which makes first writes to a fresh 16 MB input several times cheaper than torch.empty."""
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


def _shared(shape) -> torch.Tensor:
    """A float32 tensor in fresh shared memory (zero-filled, as new shared memory always is): a DataLoader
    worker hands it to the main process without copying it."""
    n = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(n * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage).view(tuple(shape))


class Scratch:
    """Reusable float32 buffers for the intermediate arrays of the resize passes (one per slot, grown on
    demand), so that a loader does not fault in fresh pages for them at every sample. Not thread-safe: one
    per process (Reg2RGDataset keeps one per DataLoader worker)."""

    def __init__(self):
        self._buffers: dict[int, np.ndarray] = {}

    def take(self, slot: int, shape) -> torch.Tensor:
        n = int(np.prod(shape))
        buf = self._buffers.get(slot)
        if buf is None or buf.size < n:
            buf = self._buffers[slot] = np.empty(n, dtype=np.float32)
        return torch.from_numpy(buf[:n].reshape(shape))


# --------------------------------------------------------------------------------------------------------------
# Sizes, boxes, normalisation
# --------------------------------------------------------------------------------------------------------------

def size_zyx(size: Sequence[int]) -> tuple[int, int, int]:
    """(x, y, z) -> (z, y, x), validated (reg2rg.geometry.size_triple)."""
    x, y, z = size_triple(size, "size")
    return z, y, x


def normalize_hu(arr):
    """Clamp HU to [HU_MIN, HU_MAX] = [-1000, 200] and scale (x - HU_CENTER) / HU_SCALE = (x + 400) / 600:
    -1000 -> -1, 200 -> 1. numpy in, float32 numpy out; torch in, float32 torch out (a new tensor)."""
    if isinstance(arr, torch.Tensor):
        return arr.to(torch.float32).clamp(HU_MIN, HU_MAX).sub_(HU_CENTER).div_(HU_SCALE)
    a = np.clip(np.asarray(arr, dtype=np.float32), HU_MIN, HU_MAX)
    return ((a - np.float32(HU_CENTER)) / np.float32(HU_SCALE)).astype(np.float32, copy=False)


def windowed_to_hu_scale(arr):
    """8-bit windowed values (CTRG) -> int16 on the HU scale of the model window: 0 -> -1000, 255 -> 200.

    normalize_hu then gives x / 255 * 2 - 1 (the 8 bits already are a window), the body crop keeps the
    voxels above 0, and -1024 outside a region mask stays black."""
    a = np.clip(np.asarray(arr, dtype=np.float32), 0, 255)
    return np.rint(HU_MIN + a * np.float32((HU_MAX - HU_MIN) / 255.0)).astype(np.int16)


def bbox(mask) -> Box | None:
    """Bounding box (slices, array order) of the true voxels of a 3-D array; None when there is none."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"bbox: expected a 3-D array, got shape {m.shape}")
    out = []
    for axis in range(3):
        nz = np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axis)))
        if nz.size == 0:
            return None
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


def box_start_size(box: Box) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(start, size) of a box, array order."""
    return tuple(s.start for s in box), tuple(s.stop - s.start for s in box)


def body_box(ct) -> Box:
    """The body crop: bounding box of voxels above HU_MIN (-1000 HU). ValueError if the volume has none."""
    box = bbox(np.asarray(ct) > HU_MIN)
    if box is None:
        raise ValueError(f"body_box: no voxel above {HU_MIN:g} HU (an empty or all-air volume)")
    return box


def region_box(ct, mask) -> Box | None:
    """The texture crop of a region: bounding box of the mask's voxels above HU_MIN (None when there is none)."""
    return bbox(np.asarray(mask, dtype=bool) & (np.asarray(ct) > HU_MIN))


# --------------------------------------------------------------------------------------------------------------
# Area resizing (exact adaptive average pooling, separable, banded)
# --------------------------------------------------------------------------------------------------------------

def _windows(frame: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(n_out, dtype=np.int64)
    return (i * frame) // n_out, ((i + 1) * frame + n_out - 1) // n_out


def _touched(frame: int, n_out: int, offset: int, n_in: int) -> tuple[int, int]:
    """The outputs [lo, hi) whose windows intersect the input range [offset, offset + n_in) of the frame."""
    s, e = _windows(frame, n_out)
    lo = int(np.searchsorted(e, offset, side="right"))
    hi = int(np.searchsorted(s, offset + n_in, side="left"))
    return lo, hi


def _window_lengths(frame: Sequence[int], size_zyx: Sequence[int], start=(0, 0, 0)) -> list[np.ndarray]:
    """Per axis, the window lengths of the outputs from `start` on (int64)."""
    out = []
    for a in range(3):
        s, e = _windows(frame[a], size_zyx[a])
        out.append((e - s)[start[a]:])
    return out


def _area_axis(x: torch.Tensor, axis: int, frame: int, n_out: int, offset: int, lo: int, hi: int,
               out: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """One separable area pass along `axis`: `x` covers [offset, offset + n) of a frame of length `frame`
    (zero elsewhere); returns outputs lo..hi-1 of the n_out-long area resize of the frame, times `scale`
    (written into `out` when given: a contiguous tensor of the result's shape)."""
    n_in = x.shape[axis]
    s, e = _windows(frame, n_out)
    s, e = s[lo:hi], e[lo:hi]
    inv = scale / (e - s)
    sc, ec = np.clip(s - offset, 0, n_in), np.clip(e - offset, 0, n_in)
    m = hi - lo
    shape = list(x.shape)
    shape[axis] = m
    if out is None:
        out = _empty(shape) if x.dtype == torch.float32 else torch.empty(shape, dtype=x.dtype)
    # One product when the input axis is short; otherwise banded blocks of outputs (each window spans
    # a few inputs, so a dense product would mostly multiply zeros).
    ch = _CHUNK[axis]
    blocks = [(0, m)] if n_in <= 2 * ch else [(r, min(m, r + ch)) for r in range(0, m, ch)]
    x = x.contiguous()
    if axis == 2:  # rows of x times each block's weights, straight into the block's columns of out
        x2, o2 = x.view(-1, n_in), out.view(-1, m)
    for r0, r1 in blocks:
        c0, c1 = int(sc[r0:r1].min()), int(ec[r0:r1].max())
        dst = out.narrow(axis, r0, r1 - r0)
        if c1 <= c0:
            dst.zero_()
            continue
        j = np.arange(c0, c1)
        w = ((j[None, :] >= sc[r0:r1, None]) & (j[None, :] < ec[r0:r1, None])) * inv[r0:r1, None]
        w = torch.from_numpy(w).to(x.dtype)
        # Strided views in and out are BLAS-compatible (unit stride along rows): no copies.
        if axis == 0:
            torch.mm(w, x[c0:c1].view(c1 - c0, -1), out=dst.view(r1 - r0, -1))
        elif axis == 1:
            torch.bmm(w.expand(x.shape[0], -1, -1), x[:, c0:c1], out=dst)
        else:
            torch.mm(x2[:, c0:c1], w.T, out=o2[:, r0:r1])
    return out


def _resize_block(x: torch.Tensor, frame: Sequence[int], start: Sequence[int], size: Sequence[int],
                  out: torch.Tensor | None = None, scale: float = 1.0, scratch: Scratch | None = None):
    """Area-resize a frame of shape `frame` ([z, y, x]) that equals the float block `x` at `start` and is zero
    elsewhere, to `size` ([z, y, x]), times `scale` (folded into the first pass). Returns (block, out_start):
    the outputs that the block touches (all other outputs are 0) and where they start. With start (0, 0, 0)
    and x.shape == frame it is a plain resize. `out`: where to write the block (contiguous, its shape);
    `scratch`: buffers for the intermediate passes (slots 1 and 2)."""
    ranges = [_touched(frame[a], size[a], start[a], x.shape[a]) for a in range(3)]
    if any(hi <= lo for lo, hi in ranges):
        return x.new_zeros((0, 0, 0)), (0, 0, 0)
    passes = [a for a in range(3) if not (start[a] == 0 and x.shape[a] == frame[a] == size[a])]
    # Shrinking axes first, growing ones last: the intermediate arrays stay small.
    passes.sort(key=lambda a: (ranges[a][1] - ranges[a][0]) / x.shape[a])
    for k, a in enumerate(passes):
        dst = out if k == len(passes) - 1 else None
        if dst is None and scratch is not None:
            shape = list(x.shape)
            shape[a] = ranges[a][1] - ranges[a][0]
            dst = scratch.take(1 + k % 2, shape)
        x = _area_axis(x, a, frame[a], size[a], start[a], *ranges[a], out=dst, scale=scale if k == 0 else 1.0)
    if not passes:
        x = x * scale if out is None else torch.mul(x, scale, out=out)
    return x, tuple(lo for lo, _ in ranges)


def _as_float(arr, copy: bool = False, dtype=torch.float32) -> torch.Tensor:
    """Contiguous float tensor of `arr`; copy=True guarantees it shares no memory with `arr`."""
    if isinstance(arr, torch.Tensor):
        t = arr.to(dtype).contiguous()
        return t.clone() if copy and t.data_ptr() == arr.data_ptr() else t
    a = np.asarray(arr)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    if a.dtype == np_dtype and not copy:
        return torch.from_numpy(np.ascontiguousarray(a))
    return torch.from_numpy(a.astype(np_dtype, order="C"))


def resize_area(arr, size) -> torch.Tensor:
    """Area-resize a [z, y, x] array to `size` (x, y, z): float32 tensor [Z, Y, X], equal to
    `F.interpolate(t[None, None].float(), size=(Z, Y, X), mode="area")[0, 0]` to float32 rounding."""
    x = _as_float(arr)
    if x.ndim != 3:
        raise ValueError(f"resize_area: expected a 3-D [z, y, x] array, got shape {tuple(x.shape)}")
    size = size_zyx(size)
    return _resize_block(x, x.shape, (0, 0, 0), size, out=torch.empty(size, dtype=torch.float32))[0]


def window_sums(arr, frame: Sequence[int], start: Sequence[int], size_zyx: Sequence[int]):
    """Exact integer sums over the area windows of an integer block `arr` placed at `start` in a zero frame
    of shape `frame` ([z, y, x]), for output size `size_zyx`: (int64 array of the touched outputs, out_start).
    The area resize is these sums divided by the window volumes (`_window_lengths`)."""
    block, out_start = _resize_block(_as_float(arr, dtype=torch.float64), frame, start, size_zyx)
    if not block.numel():
        return np.zeros((0, 0, 0), dtype=np.int64), out_start
    lz, ly, lx = (v[o:o + n] for v, o, n in zip(_window_lengths(frame, size_zyx), out_start, block.shape))
    vol = lz[:, None, None] * ly[None, :, None] * lx[None, None, :]
    return np.rint(block.numpy() * vol).astype(np.int64), out_start


def window_volume(frame: Sequence[int], size_zyx) -> torch.Tensor:
    """The number of input voxels in each area window: float32 [Z, Y, X] (exact integers)."""
    lz, ly, lx = (torch.from_numpy(v.astype(np.float32)) for v in _window_lengths(frame, size_zyx))
    return (lz.view(-1, 1, 1) * (ly.view(-1, 1) * lx.view(1, -1))).contiguous()


def _divide_by_volume_(block: torch.Tensor, frame, size_zyx, out_start) -> torch.Tensor:
    """block /= window volume, in place, for the outputs [out_start, out_start + block.shape). Divided by the
    in-plane area, then by the length in z (both exact integers in float32), so that a full window gives
    exactly 1 and a clamped sum exactly its bound."""
    lz, ly, lx = (v[o:o + n].astype(np.float32) for v, o, n in zip(_window_lengths(frame, size_zyx), out_start, block.shape))
    return block.div_(torch.from_numpy(ly[:, None] * lx[None, :])).div_(torch.from_numpy(lz).view(-1, 1, 1))


# --------------------------------------------------------------------------------------------------------------
# The method's transforms (pure functions of arrays)
# --------------------------------------------------------------------------------------------------------------

def _hu_to_unit(x: torch.Tensor, size_zyx, out: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
    """Area-resize HU `x` (float32, modified) and normalise into `out` ([Z, Y, X]). The scaling
    (x - HU_CENTER) / HU_SCALE commutes with area resizing (its weights sum to 1), so it is applied to the
    smaller of input and output; the clamp (HU_MIN, HU_MAX -> -1, 1) comes after the resize, in the authors'
    order."""
    if x.numel() <= out.numel():
        _resize_block(x.sub_(HU_CENTER), x.shape, (0, 0, 0), size_zyx, out=out, scale=1.0 / HU_SCALE, scratch=scratch)
        return out.clamp_(_UNIT_LO, _UNIT_HI)
    _resize_block(x, x.shape, (0, 0, 0), size_zyx, out=out, scale=1.0 / HU_SCALE, scratch=scratch)
    return out.sub_(HU_CENTER / HU_SCALE).clamp_(_UNIT_LO, _UNIT_HI)


def global_input(ct, size) -> torch.Tensor:
    """Global input: the volume ([z, y, x], HU) cropped to the body box, area-resized to `size` (x, y, z),
    normalised. float32 [1, Z, Y, X]."""
    ct = np.asarray(ct)
    size = size_zyx(size)
    out = torch.empty((1,) + size, dtype=torch.float32)
    _hu_to_unit(_as_float(ct[body_box(ct)], copy=True), size, out[0])
    return out


def global_sums(ct_body, size) -> np.ndarray:
    """What the cache stores for the global input: the exact HU sums over the area windows of the body crop
    `ct_body`, clamped to [HU_MIN, HU_MAX] x the window volume (int64 [Z, Y, X]; `size` is (x, y, z))."""
    ct_body = np.asarray(ct_body)
    size = size_zyx(size)
    sums, _ = window_sums(ct_body, ct_body.shape, (0, 0, 0), size)
    lz, ly, lx = _window_lengths(ct_body.shape, size)
    vol = lz[:, None, None] * ly[None, :, None] * lx[None, None, :]
    return np.clip(sums, int(HU_MIN) * vol, int(HU_MAX) * vol)


def global_from_sums(sums, frame: Sequence[int], size_zyx, out: torch.Tensor | None = None,
                     volume: torch.Tensor | None = None) -> torch.Tensor:
    """The global input [Z, Y, X] from `global_sums` of a body crop of shape `frame` ([z, y, x]).
    `volume`: window_volume(frame, size_zyx) when the caller has it."""
    sums = torch.from_numpy(np.asarray(sums))
    if out is None:
        out = torch.empty(tuple(size_zyx), dtype=torch.float32)
    out.copy_(sums)  # exact: |sums| < 2**24
    # the sums are clamped already: (sum / volume - HU_CENTER) / HU_SCALE
    if volume is None:
        _divide_by_volume_(out, frame, size_zyx, (0, 0, 0))
    else:
        out.div_(volume)
    return out.sub_(HU_CENTER).div_(HU_SCALE)


def masked_crop(ct, mask, bbox: Box) -> np.ndarray:
    """The volume inside `bbox` where the mask is set, OUTSIDE_HU (-1024) elsewhere (ct's dtype)."""
    ct, mask = np.asarray(ct), np.asarray(mask, dtype=bool)
    return np.where(mask[bbox], ct[bbox], np.asarray(OUTSIDE_HU, dtype=ct.dtype))


def _texture_into(ct_crop, mask_crop, size_zyx, out: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
    ct_crop, mask_crop = np.asarray(ct_crop), np.asarray(mask_crop, dtype=bool)
    if scratch is None:
        masked = np.where(mask_crop, ct_crop, np.asarray(OUTSIDE_HU, dtype=ct_crop.dtype))
        return _hu_to_unit(torch.from_numpy(masked.astype(np.float32)), size_zyx, out)
    x = scratch.take(0, ct_crop.shape)
    xn = x.numpy()
    np.copyto(xn, ct_crop, casting="unsafe")
    np.copyto(xn, np.float32(OUTSIDE_HU), where=~mask_crop)
    return _hu_to_unit(x, size_zyx, out, scratch=scratch)


def region_texture_input(ct, mask, bbox: Box | None, size) -> torch.Tensor:
    """Texture input of one region: the volume times the mask with OUTSIDE_HU (-1024) outside it, cropped to
    `bbox` (slices into ct's frame; None: `region_box(ct, mask)`, the authors' crop), area-resized to `size`
    (x, y, z), normalised. float32 [1, Z, Y, X]. ValueError when the region has no voxel to crop to."""
    ct, mask = np.asarray(ct), np.asarray(mask, dtype=bool)
    if ct.shape != mask.shape:
        raise ValueError(f"region_texture_input: volume {ct.shape} and mask {mask.shape} differ in shape")
    if bbox is None:
        bbox = region_box(ct, mask)
        if bbox is None:
            raise ValueError(f"region_texture_input: the mask has no voxel above {HU_MIN:g} HU")
    size = size_zyx(size)
    out = torch.empty((1,) + size, dtype=torch.float32)
    _texture_into(ct[bbox], mask[bbox], size, out[0])
    return out


def _write_block(dst: torch.Tensor, block: torch.Tensor, start, zeroed: bool = False) -> torch.Tensor:
    """Write `block` into `dst` at `start` and zero the rest of `dst` (each element written once), unless
    `zeroed` says that dst is zero already (fresh calloc'd memory: its untouched pages then stay unmapped)."""
    z, y, x = start
    dz, dy, dx = block.shape
    if zeroed:
        if block.numel():
            dst[z:z + dz, y:y + dy, x:x + dx] = block
        return dst
    if not block.numel():
        return dst.zero_()
    dst[:z].zero_()
    dst[z + dz:].zero_()
    mid = dst[z:z + dz]
    mid[:, :y].zero_()
    mid[:, y + dy:].zero_()
    mid[:, y:y + dy, :x].zero_()
    mid[:, y:y + dy, x + dx:].zero_()
    mid[:, y:y + dy, x:x + dx] = block
    return dst


def region_geometry_input(mask, size) -> torch.Tensor:
    """Geometry input of one region: the mask ([z, y, x], in the global input's frame, i.e. the body crop),
    not cropped to the region, area-resized to `size` (x, y, z): the fraction of each output window inside
    the region. float32 [1, Z, Y, X] in [0, 1]; all zeros for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    size = size_zyx(size)
    out = torch.zeros((1,) + size, dtype=torch.float32)
    box = bbox(mask)
    if box is not None:
        start, _ = box_start_size(box)
        block, out_start = _resize_block(_as_float(mask[box]), mask.shape, start, size)
        _write_block(out[0], block, out_start)
    return out


def geometry_counts(mask_box, frame: Sequence[int], start: Sequence[int], size) -> tuple[np.ndarray, tuple]:
    """What the cache stores for a geometry input: the exact count of mask voxels in each area window that the
    mask's box touches (int64), and where those outputs start. `mask_box` is the mask inside its box,
    placed at `start` in a frame of shape `frame` ([z, y, x]); `size` is (x, y, z)."""
    return window_sums(np.asarray(mask_box, dtype=np.uint8), frame, start, size_zyx(size))


def geometry_from_counts(counts, out_start, frame: Sequence[int], size_zyx,
                         out: torch.Tensor | None = None, zeroed: bool = False,
                         volume: torch.Tensor | None = None) -> torch.Tensor:
    """The geometry input [Z, Y, X] from `geometry_counts` (counts / window volume, zero elsewhere).
    zeroed=True: `out` is known to be zero, only the counts' block is written. `volume`: window_volume(frame,
    size_zyx) when the caller has it (shared by the regions of a scan)."""
    if out is None:
        out, zeroed = torch.from_numpy(np.zeros(tuple(size_zyx), dtype=np.float32)), True
    counts = np.asarray(counts)
    if not counts.size:
        return out if zeroed else out.zero_()
    if not zeroed:
        out.zero_()
    z, y, x = out_start
    dz, dy, dx = counts.shape
    dst = out[z:z + dz, y:y + dy, x:x + dx]
    if counts.dtype == np.uint16:  # torch has few uint16 kernels
        counts = counts.astype(np.int32)
    dst.copy_(torch.from_numpy(counts))  # integers: exact in float32
    if volume is None:
        _divide_by_volume_(dst, frame, size_zyx, out_start)
    else:
        dst.div_(volume[z:z + dz, y:y + dy, x:x + dx])
    return out


def _lfd_off_into(ct_box, mask_box, frame, start, size_zyx, out: torch.Tensor) -> torch.Tensor:
    # area(where(m, ct, -1024)) = -1024 + area(where(m, ct + 1024, 0)): only the mask's box is resized.
    outside = torch.from_numpy(~np.asarray(mask_box, dtype=bool))
    x = _as_float(ct_box, copy=True).sub_(float(OUTSIDE_HU)).masked_fill_(outside, 0.0)
    block, out_start = _resize_block(x, frame, start, size_zyx)
    _write_block(out, block, out_start)
    return out.add_(float(OUTSIDE_HU) - HU_CENTER).div_(HU_SCALE).clamp_(_UNIT_LO, _UNIT_HI)


def region_lfd_off_input(ct, mask, size) -> torch.Tensor:
    """LFD-off ablation input: the volume times the mask with OUTSIDE_HU outside it, NOT cropped to the
    region (ct and mask in the global input's frame), area-resized to `size` (x, y, z), normalised.
    float32 [1, Z, Y, X]."""
    ct, mask = np.asarray(ct), np.asarray(mask, dtype=bool)
    if ct.shape != mask.shape:
        raise ValueError(f"region_lfd_off_input: volume {ct.shape} and mask {mask.shape} differ in shape")
    size = size_zyx(size)
    out = torch.empty((1,) + size, dtype=torch.float32)
    box = bbox(mask)
    if box is None:
        return out.fill_(float(normalize_hu(np.float32(OUTSIDE_HU))))
    start, _ = box_start_size(box)
    _lfd_off_into(ct[box], mask[box], ct.shape, start, size, out[0])
    return out


# --------------------------------------------------------------------------------------------------------------
# One cached scan's inputs
# --------------------------------------------------------------------------------------------------------------

def scan_inputs(scan, regions: Sequence[int], lfd: bool = True, scratch: Scratch | None = None,
                images: bool = True) -> dict:
    """The visual inputs of one cached scan (reg2rg.cache.CachedScan) for the given region indices, at the
    cache's input size: {"global": [1, Z, Y, X], "texture": [R, 1, Z, Y, X], "geometry": [R, 1, Z, Y, X]}
    (float32). lfd=False puts the LFD-off inputs (masked volume, uncropped) in "texture". `scratch` (optional)
    reuses the intermediate buffers across calls. images=False: only "geometry" (no global, no texture)."""
    size = size_zyx(scan.input_size)
    frame = scan.frame_shape
    if _in_worker():  # born in shared memory: the batch travels to the main process without a copy
        glob = _shared((1,) + size) if images else None
        texture = _shared((len(regions), 1) + size) if images else None
        geometry = _shared((len(regions), 1) + size)
    else:
        glob = _empty((1,) + size) if images else None
        texture = _empty((len(regions), 1) + size) if images else None
        # calloc'd: the pages that no region's block touches are never written here
        geometry = torch.from_numpy(np.zeros((len(regions), 1) + size, dtype=np.float32))
    volume = window_volume(frame, size)
    if not images:
        pass
    elif scan.global_sums is not None:
        global_from_sums(scan.global_sums, frame, size, out=glob[0], volume=volume)
    else:  # a scan smaller than the model input: the cache holds its whole body crop
        _hu_to_unit(_as_float(scan.ct_in(tuple(slice(0, n) for n in frame)), copy=True), size, glob[0], scratch=scratch)
    for k, i in enumerate(regions):
        box = scan.region_box(i)
        if box is None or not scan.meta["regions"][i]["usable"]:
            raise ValueError(f"{scan.path}: region {REGIONS[i]!r} has no mask voxel above {HU_MIN:g} HU in the body")
        if not images:
            pass
        elif lfd:
            m = scan.region_mask(i)
            crop = scan.region_crop(i)
            rel = scan.region_crop(i, relative=True)
            _texture_into(scan.ct_in(crop), m[rel], size, texture[k, 0], scratch=scratch)
        else:
            start, _ = box_start_size(box)
            _lfd_off_into(scan.ct_in(box), scan.region_mask(i), frame, start, size, texture[k, 0])
        counts, out_start = scan.geometry_counts(i)
        geometry_from_counts(counts, out_start, frame, size, out=geometry[k, 0], zeroed=True, volume=volume)
    if not images:
        return {"geometry": geometry}
    return {"global": glob, "texture": texture, "geometry": geometry}


# --------------------------------------------------------------------------------------------------------------
# The authors' way, for checks and benchmarks
# --------------------------------------------------------------------------------------------------------------

def reference_inputs(volume_path, mask_paths: dict[str, str | Path], size) -> dict:
    """The authors' data path, kept as a reference for tests and benchmarks (slow on purpose): read the volume
    and one mask file per region with nibabel as float64, mask each region (-1024 outside), crop it to its
    voxels > -1000 HU, resize with F.interpolate(mode="area") in float32 (MONAI's Resize), clamp and scale;
    crop the volume and all masks to the volume's voxels > -1000 HU and resize them together.

    Returns {"global": [1, Z, Y, X], "texture": {region: [1, Z, Y, X]}, "geometry": {region: [1, Z, Y, X]}}
    in this module's [z, y, x] order (nibabel arrays are [x, y, z]); regions whose mask is empty are absent
    from "texture" (the authors skipped them) but present in "geometry". `size` is (x, y, z)."""
    import nibabel as nib
    import torch.nn.functional as F

    zyx = size_zyx(size)

    def crop_fg(a):
        fg = (a > HU_MIN).any(axis=0)
        idx = [np.flatnonzero(fg.any(axis=tuple(j for j in range(3) if j != d))) for d in range(3)]
        return (slice(None),) + tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)

    def resize(a):
        t = torch.as_tensor(a, dtype=torch.float32)[None]
        return F.interpolate(t, size=zyx, mode="area")[0]

    img = nib.load(str(volume_path)).get_fdata().transpose(2, 1, 0)  # [x, y, z] -> [z, y, x]
    texture, masks, names = {}, [], []
    for name, path in mask_paths.items():
        m = nib.load(str(path)).get_fdata().transpose(2, 1, 0)
        masks.append(m)
        names.append(name)
        if np.sum(m) == 0:
            continue
        mi = img * m
        mi[m == 0] = OUTSIDE_HU
        mi = mi[None]
        t = resize(mi[crop_fg(mi)])
        texture[name] = (torch.clamp(t, HU_MIN, HU_MAX) - HU_CENTER) / HU_SCALE
    box = crop_fg(img[None])
    g = resize(img[None][box])
    seg = resize(np.stack(masks)[box]) if masks else torch.zeros((0,) + zyx)
    return {
        "global": (torch.clamp(g, HU_MIN, HU_MAX) - HU_CENTER) / HU_SCALE,
        "texture": texture,
        "geometry": {n: seg[i:i + 1] for i, n in enumerate(names)},
    }
