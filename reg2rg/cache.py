"""The `cache` stage: per-scan arrays written once, so that training never reads a .nii.gz or resamples a full
volume again. Built for one model input size (x, y, z); reg2rg.transforms and reg2rg.dataset make them model
inputs.

Per scan, in the cache folder:
    {case_id}.safetensors   uncompressed safetensors, read with a memory map:
        ct                  int16 [z, y, x]: the ingested volume at native resolution inside the union box of
                            the usable regions' mask boxes (all a texture or LFD-off input reads), in the body
                            crop's frame; or, when that raw array would be large next to the gzip sources (see
                            RAW_LIMIT), its byte planes `ct.lo`, `ct.hi` (uint8, each raw or zlib, as the
                            sidecar says; the high plane is nearly constant and shrinks ~20x)
        mask.{i}            uint8: np.packbits of REGIONS[i]'s mask inside its box (C order), zlib-compressed
                            when that halves it (the sidecar's `bits`)
        global              int16 (int32 for large windows) [Z, Y, X]: the exact HU sums over the area windows
                            of the body crop for the input size, clamped to [-1000, 200] x window volume
                            (reg2rg.transforms.global_sums), or their zlib bytes (uint8) when that halves them; the
                            global input is these / volume, scaled. Absent for a scan whose body crop takes
                            fewer bytes (smaller than the model input): then `ct` holds the whole body crop
                            and the global input is resized from it when loading
        geometry.{i}        uint8: zlib of the exact mask voxel counts (uint8, or uint16 for windows over 255
                            voxels) over the area windows that REGIONS[i]'s box touches
                            (reg2rg.transforms.geometry_counts); the geometry input is these / volume
    {case_id}.json          the sidecar below; written last, so a scan with a sidecar is complete.

Sidecar (3-vectors in ITK order [x, y, z], as everywhere in docs/formats.md):
    case_id, file, bytes (of the .safetensors), input_size, format_version, reg2rg_version
    sources     {"volume"|"mask": {"path", "bytes", "mtime_ns", "sha256"}}: a rerun for the same input size
                whose sources are unchanged (same size and mtime, or else the same sha256) skips the scan
    volume      the ingested grid: size, spacing, origin, direction
    body        {"start", "size", "origin"}: the body crop (bounding box of voxels > -1000 HU) in the volume:
                index start, size, physical origin. It is the frame of every box below.
    ct          {"start", "size", "encoding": "int16" | "byteplanes", "planes": {"lo", "hi": "raw"|"zlib"} | null}
    global      {"from": "sums", "dtype", "encoding": "raw" | "zlib"} or {"from": "ct"}
    regions     one entry per REGIONS[i]: index, name, voxels (in the whole mask), voxels_in_body (mask voxels
                > -1000 HU), usable (voxels_in_body > 0), box (the mask's bounding box within the body crop;
                null if none), crop (the texture crop: bounding box of the voxels > -1000 HU; null if none),
                tensor (its bits, or null), bits ("raw" | "zlib" | null), geometry ({"start", "size" of the touched outputs, "dtype",
                "tensor"} for usable regions, else null)
"""
from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reg2rg import __version__
from reg2rg.constants import HU_MIN, REGIONS
from reg2rg.transforms import (
    PAPER_INPUT_SIZE,
    Box,
    bbox,
    box_start_size,
    geometry_counts,
    global_sums,
    size_zyx,
    windowed_to_hu_scale,
)
from reg2rg.files import atomic_path, read_json, sha256_file as _sha256, write_json_atomic
from reg2rg.errors import InputError
from reg2rg.geometry import grid_record, itk_message, same_grid

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
# The CT is stored as plain int16 (nothing to decode) when the whole file then takes at most this many times
# the bytes of its gzip sources (volume + mask); otherwise as byte planes. The goal: at most twice the sources.
RAW_LIMIT = 1.9
# A byte plane (or a geometry array) is stored zlib-compressed when that at least halves it.
ZLIB_GAIN = 0.5
ZLIB_LEVEL = 1


def sidecar_path(cache_path: str | Path) -> Path:
    """`cache/x.safetensors` -> `cache/x.json`."""
    p = Path(cache_path)
    name = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(name + ".json")




def _source_record(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def _box_json(box: Box | None) -> dict | None:
    if box is None:
        return None
    start, size = box_start_size(box)
    return {"start": [int(v) for v in start[::-1]], "size": [int(v) for v in size[::-1]]}


def _box_from_json(rec: dict | None) -> Box | None:
    if rec is None:
        return None
    return tuple(slice(int(a), int(a) + int(n)) for a, n in zip(rec["start"][::-1], rec["size"][::-1]))


def _union(boxes: list[Box]) -> Box:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def _read_image(path: Path, what: str):
    import SimpleITK as sitk

    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, f"cannot read the {what}: {itk_message(err, short=True)}") from err
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"{what} must be a 3-D scalar image, got {img.GetDimension()}-D with "
                               f"{img.GetNumberOfComponentsPerPixel()} components")
    return sitk.GetArrayFromImage(img), grid_record(img)


def _as_int16(ct: np.ndarray, path: Path) -> np.ndarray:
    if ct.dtype == np.int16:
        return ct
    if not np.issubdtype(ct.dtype, np.integer):
        raise InputError(path, f"voxel type {ct.dtype}: an ingested volume is int16 HU (run the ingest stage)")
    lo, hi = int(ct.min()), int(ct.max())
    if lo < -32768 or hi > 32767:
        raise InputError(path, f"values {lo}..{hi} do not fit int16 HU")
    return ct.astype(np.int16)


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------

def _encode_ct(ct: np.ndarray, other_bytes: int, source_bytes: int) -> tuple[dict, dict]:
    """The CT as tensors + its sidecar entry (encoding, planes)."""
    if ct.nbytes + other_bytes <= RAW_LIMIT * source_bytes:
        return {"ct": ct}, {"encoding": "int16", "planes": None}
    planes = ct.reshape(-1).view(np.uint8).reshape(-1, 2)  # little-endian: [low byte, high byte]
    tensors, modes = {}, {}
    for name, col in (("lo", 0), ("hi", 1)):
        plane = np.ascontiguousarray(planes[:, col])
        packed = zlib.compress(plane, ZLIB_LEVEL)
        if len(packed) <= ZLIB_GAIN * plane.nbytes:
            tensors[f"ct.{name}"], modes[name] = np.frombuffer(packed, dtype=np.uint8), "zlib"
        else:
            tensors[f"ct.{name}"], modes[name] = plane, "raw"
    return tensors, {"encoding": "byteplanes", "planes": modes}


def _up_to_date(out_path: Path, side_path: Path, volume_path: Path, mask_path: Path, input_size,
                intensity_mode: str = "hu") -> dict | None:
    if not (out_path.is_file() and side_path.is_file()):
        return None
    try:
        meta = json.loads(side_path.read_text())
        if (meta.get("format_version") != FORMAT_VERSION or meta.get("input_size") != list(input_size)
                or meta.get("intensity_mode", "hu") != intensity_mode or meta.get("bytes") != out_path.stat().st_size):
            return None
        for key, path in (("volume", volume_path), ("mask", mask_path)):
            rec, st = meta["sources"][key], path.stat()
            if st.st_size != rec["bytes"]:
                return None
            if st.st_mtime_ns != rec["mtime_ns"] and _sha256(path) != rec["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def cache_scan(volume_path, mask_path, out_path, input_size=PAPER_INPUT_SIZE, intensity_mode: str = "hu") -> dict:
    """Write the cache of one scan for the model input size `input_size` (x, y, z): `out_path`
    (`{case_id}.safetensors`) and its JSON sidecar beside it (see the module docstring), from an ingested
    volume (int16 HU) and its uint16 region label file on the same grid. Returns the sidecar. Does nothing
    when both files exist for this input size and the sources are unchanged.

    Raises InputError naming the file when a source is unreadable, the mask is on another grid or holds bits
    beyond the 10 regions, the volume has no voxel above -1000 HU, or no region has a mask voxel above
    -1000 HU (all masks empty: the manifest excludes such scans).

    `intensity_mode` is the manifest's: `hu`, or `windowed` for 8-bit windowed volumes (CTRG), which are
    put on the HU scale of the model window first (reg2rg.transforms.windowed_to_hu_scale), so that the rest of the
    data path normalises them to x / 255 * 2 - 1 instead of clamping 8-bit values as HU."""
    from safetensors.numpy import save_file

    volume_path, mask_path, out_path = Path(volume_path), Path(mask_path), Path(out_path)
    if not out_path.name.endswith(".safetensors"):
        raise ValueError(f"cache_scan: out_path must end in .safetensors, got {out_path}")
    input_size = [int(v) for v in input_size]
    size_zyx(input_size)  # validates
    side_path = sidecar_path(out_path)
    if intensity_mode not in ("hu", "windowed"):
        raise ValueError(f"intensity_mode must be hu or windowed, got {intensity_mode!r}")
    meta = _up_to_date(out_path, side_path, volume_path, mask_path, input_size, intensity_mode)
    if meta is not None:
        log.info("%s: up to date, skipped", out_path)
        return meta

    ct, vol_geom = _read_image(volume_path, "volume")
    ct = _as_int16(ct, volume_path)
    if intensity_mode == "windowed":
        ct = windowed_to_hu_scale(ct)
    label, mask_geom = _read_image(mask_path, "region mask")
    if not same_grid(vol_geom, mask_geom):
        raise InputError(mask_path, f"the mask's grid (size {mask_geom['size']}, spacing {mask_geom['spacing']}, "
                                    f"origin {mask_geom['origin']}) differs from the volume's {volume_path} "
                                    f"(size {vol_geom['size']}, spacing {vol_geom['spacing']}, origin "
                                    f"{vol_geom['origin']}): masks must be on the ingested grid (run the masks stage)")
    if not np.issubdtype(label.dtype, np.integer):
        raise InputError(mask_path, f"voxel type {label.dtype}: expected a uint16 region label file")
    label = label.astype(np.uint16, copy=False)
    if label.size and int(np.bitwise_or.reduce(label, axis=None)) >> len(REGIONS):
        raise InputError(mask_path, f"bits above the {len(REGIONS)} region bits are set: not a region label file")

    body = bbox(ct > HU_MIN)
    if body is None:
        raise InputError(volume_path, f"no voxel above {HU_MIN:g} HU: nothing to crop to (an empty volume?)")
    ct_body = ct[body]
    label_body = label[body]
    frame = ct_body.shape
    inside = ct_body > HU_MIN

    tensors: dict[str, np.ndarray] = {}
    regions, usable_boxes = [], []
    for i, name in enumerate(REGIONS):
        bit = np.uint16(1 << i)
        m = (label_body & bit).astype(bool)
        rec = {"index": i, "name": name, "voxels": int(np.count_nonzero(label & bit)), "voxels_in_body": 0,
               "usable": False, "box": None, "crop": None, "tensor": None, "bits": None, "geometry": None}
        box = bbox(m)
        if box is not None:
            mb = m[box]
            rec.update(box=_box_json(box), tensor=f"mask.{i}")
            bits = np.packbits(mb.reshape(-1))
            packed = zlib.compress(bits, ZLIB_LEVEL)
            rec["bits"] = "zlib" if len(packed) <= ZLIB_GAIN * bits.nbytes else "raw"
            tensors[f"mask.{i}"] = np.frombuffer(packed, dtype=np.uint8) if rec["bits"] == "zlib" else bits
            in_body = mb & inside[box]
            crop = bbox(in_body)
            if crop is not None:
                rec["voxels_in_body"] = int(np.count_nonzero(in_body))
                rec["usable"] = True
                rec["crop"] = _box_json(tuple(slice(b.start + c.start, b.start + c.stop) for b, c in zip(box, crop)))
                usable_boxes.append(box)
                counts, out_start = geometry_counts(mb, frame, box_start_size(box)[0], input_size)
                dtype = np.uint8 if counts.max(initial=0) <= 255 else np.uint16
                tensors[f"geometry.{i}"] = np.frombuffer(zlib.compress(counts.astype(dtype), ZLIB_LEVEL), np.uint8)
                rec["geometry"] = {"start": [int(v) for v in out_start[::-1]],
                                   "size": [int(v) for v in counts.shape[::-1]],
                                   "dtype": np.dtype(dtype).name, "tensor": f"geometry.{i}"}
        regions.append(rec)
    if not usable_boxes:
        raise InputError(mask_path, "no region mask has a voxel inside the body (> -1000 HU): all "
                                    f"{len(REGIONS)} regions are empty or lie in air; the manifest excludes such scans")

    sums = global_sums(ct_body, input_size)
    g_dtype = np.int16 if np.abs(sums).max(initial=0) <= np.iinfo(np.int16).max else np.int32
    sums = sums.astype(g_dtype)
    packed = zlib.compress(sums, ZLIB_LEVEL)
    g_encoding = "zlib" if len(packed) <= ZLIB_GAIN * sums.nbytes else "raw"
    g_tensor = np.frombuffer(packed, dtype=np.uint8) if g_encoding == "zlib" else sums
    ct_box = _union(usable_boxes)
    union_bytes = int(np.prod([b.stop - b.start for b in ct_box])) * ct_body.itemsize
    if ct_body.nbytes <= union_bytes + g_tensor.nbytes:
        # A scan smaller than the model input: the whole body crop takes fewer bytes than the global sums, so it
        # is stored instead and the global input is resized from it when loading (cheap at this size).
        ct_box = tuple(slice(0, n) for n in frame)
        g_meta = {"from": "ct"}
    else:
        tensors["global"] = g_tensor
        g_meta = {"from": "sums", "dtype": np.dtype(g_dtype).name, "encoding": g_encoding}

    sources = {"volume": _source_record(volume_path), "mask": _source_record(mask_path)}
    source_bytes = sources["volume"]["bytes"] + sources["mask"]["bytes"]
    ct_tensors, ct_meta = _encode_ct(np.ascontiguousarray(ct_body[ct_box]),
                                     sum(t.nbytes for t in tensors.values()), source_bytes)
    tensors.update(ct_tensors)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp))

    start, bsize = box_start_size(body)
    d = np.asarray(vol_geom["direction"]).reshape(3, 3)
    body_origin = np.asarray(vol_geom["origin"]) + d @ (np.asarray(start[::-1], float) * np.asarray(vol_geom["spacing"]))
    meta = {
        "case_id": out_path.name[: -len(".safetensors")],
        "file": out_path.name,
        "bytes": out_path.stat().st_size,
        "input_size": input_size,
        "intensity_mode": intensity_mode,
        "sources": sources,
        "volume": vol_geom,
        "body": {"start": [int(v) for v in start[::-1]], "size": [int(v) for v in bsize[::-1]],
                 "origin": [float(v) for v in body_origin]},
        "ct": {**_box_json(ct_box), **ct_meta},
        "global": g_meta,
        "regions": regions,
        "format_version": FORMAT_VERSION,
        "reg2rg_version": __version__,
    }
    ratio = meta["bytes"] / max(1, source_bytes)
    (log.warning if ratio > 2 else log.info)(
        "%s: body %s of %s (x, y, z), CT box %s as %s, %.1f MB = %.2fx its sources", out_path.name,
        meta["body"]["size"], vol_geom["size"], meta["ct"]["size"], ct_meta["encoding"], meta["bytes"] / 1e6, ratio)
    write_json_atomic(side_path, meta, indent=1)
    return meta


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------

@dataclass
class CachedScan:
    """One scan's cache. Boxes are in the body crop's frame (`frame_shape`, [z, y, x]); `ct` covers `ct_box`."""

    path: Path
    meta: dict
    ct: np.ndarray
    bits: dict[int, np.ndarray] = field(repr=False)
    global_sums: np.ndarray | None = field(repr=False)  # None: make the global input from `ct` (the body crop)
    geometry: dict[int, np.ndarray] = field(repr=False)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The model input size (x, y, z) the cache was built for."""
        return tuple(self.meta["input_size"])

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """Shape [z, y, x] of the body crop, the frame of the global input and of every box."""
        return tuple(self.meta["body"]["size"][::-1])

    @property
    def ct_box(self) -> Box:
        return _box_from_json(self.meta["ct"])

    @property
    def usable_regions(self) -> list[int]:
        """Regions with a mask voxel above -1000 HU (those with a texture crop), ascending."""
        return [r["index"] for r in self.meta["regions"] if r["usable"]]

    def region_box(self, i: int) -> Box | None:
        """The bounding box of REGIONS[i]'s mask in the body crop (None: no voxel there)."""
        return _box_from_json(self.meta["regions"][i]["box"])

    def region_crop(self, i: int, relative: bool = False) -> Box | None:
        """The texture crop of REGIONS[i] (relative=True: within region_box(i) instead of the body crop)."""
        crop = _box_from_json(self.meta["regions"][i]["crop"])
        if crop is None or not relative:
            return crop
        return tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(crop, self.region_box(i)))

    def region_mask(self, i: int) -> np.ndarray:
        """REGIONS[i]'s mask inside region_box(i): bool [dz, dy, dx]."""
        box = self.region_box(i)
        if box is None:
            raise ValueError(f"{self.path}: region {REGIONS[i]!r} has no mask voxel in the body crop")
        shape = tuple(s.stop - s.start for s in box)
        bits = self.bits[i]
        if self.meta["regions"][i].get("bits") == "zlib":
            bits = np.frombuffer(zlib.decompress(bits), dtype=np.uint8)
        return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).view(bool)

    def ct_in(self, box: Box) -> np.ndarray:
        """The CT (int16 HU, a view) inside `box` (body crop frame), which must lie within ct_box."""
        u = self.ct_box
        if any(b.start < c.start or b.stop > c.stop for b, c in zip(box, u)):
            raise ValueError(f"{self.path}: box {box} reaches outside the cached CT box {u}")
        return self.ct[tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, u))]

    def geometry_counts(self, i: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        """REGIONS[i]'s geometry window counts and where they start (array order), see data.geometry_counts."""
        g = self.meta["regions"][i]["geometry"]
        if g is None:
            raise ValueError(f"{self.path}: region {REGIONS[i]!r} has no geometry (not usable)")
        shape = tuple(g["size"][::-1])
        counts = np.frombuffer(bytearray(zlib.decompress(self.geometry[i])), dtype=np.dtype(g["dtype"]))
        if counts.size != int(np.prod(shape)):
            raise InputError(self.path, f"geometry of {REGIONS[i]!r} holds {counts.size} values, expected {shape}")
        return counts.reshape(shape), tuple(g["start"][::-1])


def _decode_plane(raw: np.ndarray, mode: str, n: int, path: Path) -> np.ndarray:
    if mode == "raw":
        plane = raw
    elif mode == "zlib":
        plane = np.frombuffer(zlib.decompress(raw), dtype=np.uint8)
    else:
        raise InputError(path, f"unknown byte-plane mode {mode!r}")
    if plane.size != n:
        raise InputError(path, f"byte plane holds {plane.size} bytes, expected {n}")
    return plane


def read_cache(path) -> CachedScan:
    """Read one scan's cache (`{case_id}.safetensors`, or its `.json` sidecar). InputError naming the file if
    either is missing or malformed."""
    from safetensors import safe_open

    path = Path(path)
    if path.name.endswith(".json"):
        path = path.with_name(path.name[: -len(".json")] + ".safetensors")
    side = sidecar_path(path)
    meta = read_json(side, "cache sidecar", "run the cache stage")
    if not path.is_file():
        raise InputError(path, "cache file not found (run the cache stage)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(side, f"cache format {meta.get('format_version')}, expected {FORMAT_VERSION}: "
                               "rerun the cache stage")
    shape = tuple(meta["ct"]["size"][::-1])
    try:
        with safe_open(str(path), framework="numpy") as f:
            enc = meta["ct"]
            if enc["encoding"] == "int16":
                ct = f.get_tensor("ct")
            else:
                n = int(np.prod(shape))
                ct = np.empty(shape, dtype=np.int16)
                view = ct.reshape(-1).view(np.uint8).reshape(-1, 2)
                view[:, 0] = _decode_plane(f.get_tensor("ct.lo"), enc["planes"]["lo"], n, path)
                view[:, 1] = _decode_plane(f.get_tensor("ct.hi"), enc["planes"]["hi"], n, path)
            bits = {r["index"]: f.get_tensor(r["tensor"]) for r in meta["regions"] if r["tensor"]}
            geometry = {r["index"]: f.get_tensor(r["geometry"]["tensor"]) for r in meta["regions"] if r["geometry"]}
            sums = None
            if meta["global"]["from"] == "sums":
                sums = f.get_tensor("global")
                if meta["global"]["encoding"] == "zlib":
                    sums = np.frombuffer(bytearray(zlib.decompress(sums)), dtype=np.dtype(meta["global"]["dtype"]))
                    sums = sums.reshape(size_zyx(meta["input_size"]))
    except InputError:
        raise
    except Exception as err:  # OSError, a missing tensor, zlib or safetensors errors on a damaged file
        raise InputError(path, f"cannot read the cache: {type(err).__name__}: {err}") from err
    if ct.shape != shape or ct.dtype != np.int16:
        raise InputError(path, f"ct is {ct.dtype} {ct.shape}, the sidecar says int16 {shape}")
    if sums is not None and sums.shape != size_zyx(meta["input_size"]):
        raise InputError(path, f"global sums are {sums.shape}, expected {size_zyx(meta['input_size'])}")
    return CachedScan(path=path, meta=meta, ct=ct, bits=bits, global_sums=sums, geometry=geometry)


# --------------------------------------------------------------------------------------------------------------
# Many scans
# --------------------------------------------------------------------------------------------------------------

def cache_manifest(manifest_df, out_dir, threads: int = 1, input_size=PAPER_INPUT_SIZE):
    """Cache every included scan of a manifest into `out_dir` for the model input size `input_size` (x, y, z),
    with reg2rg.per_scan.run_per_case over `threads` processes. Returns a status
    DataFrame, one row per manifest scan: case_id, status (ok | error | skipped), reason, cache (the
    .safetensors path when ok), cache_bytes and source_bytes. Excluded scans are `skipped` with the
    manifest's reason."""
    import pandas as pd

    from reg2rg.per_scan import run_per_case

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, rows = [], []
    for row in manifest_df.to_dict("records"):
        case = row["case_id"]
        if row["status"] != "included":
            rows.append({"case_id": case, "status": "skipped", "reason": row.get("reason") or "excluded in the manifest"})
        elif not row.get("volume") or not row.get("mask"):
            rows.append({"case_id": case, "status": "error", "reason": "included in the manifest without a volume or mask"})
        else:
            jobs.append((case, {"volume_path": row["volume"], "mask_path": row["mask"],
                                "out_path": str(out_dir / f"{case}.safetensors"),
                                "input_size": [int(v) for v in input_size],
                                "intensity_mode": row.get("intensity_mode") or "hu"}))
    status = run_per_case(cache_scan, jobs, threads=threads, desc="cache", not_run=rows)
    caches, cache_bytes, source_bytes = [], [], []
    for r in status.itertuples():
        if r.status == "ok":
            path = out_dir / f"{r.case_id}.safetensors"
            meta = json.loads(sidecar_path(path).read_text())
            caches.append(str(path))
            cache_bytes.append(int(meta["bytes"]))
            source_bytes.append(int(meta["sources"]["volume"]["bytes"] + meta["sources"]["mask"]["bytes"]))
        else:
            caches.append(None)
            cache_bytes.append(None)
            source_bytes.append(None)
    status["cache"] = pd.array(caches, dtype="string")
    status["cache_bytes"] = pd.array(cache_bytes, dtype="Int64")
    status["source_bytes"] = pd.array(source_bytes, dtype="Int64")
    status = status.sort_values("case_id").reset_index(drop=True)
    ok = status[status.status == "ok"]
    if len(ok):
        log.info("cache: %d ok, %d skipped, %d failed; %.1f MB for %.1f MB of sources (%.2fx)", len(ok),
                 int((status.status == "skipped").sum()), int((status.status == "error").sum()),
                 ok.cache_bytes.sum() / 1e6, ok.source_bytes.sum() / 1e6, ok.cache_bytes.sum() / ok.source_bytes.sum())
    for r in status[status.status == "skipped"].itertuples():
        log.info("cache: %s skipped: %s", r.case_id, r.reason)
    return status
