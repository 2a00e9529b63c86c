"""The cache stage on real scans: cached inputs equal the direct transform and the authors' way, crops hold what
they should, bytes stay within twice the sources, reruns skip, bad inputs fail with the file named."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from reg2rg.cache import cache_manifest, cache_scan, read_cache, sidecar_path
from reg2rg.constants import OUTSIDE_HU, REGIONS
from reg2rg.transforms import (
    bbox,
    body_box,
    global_input,
    masked_crop,
    reference_inputs,
    region_geometry_input,
    region_texture_input,
    scan_inputs,
    size_zyx,
)
from reg2rg.errors import InputError

from conftest import SHARED_DATA as DATA, needs_fixtures

TS = DATA / "totalseg-chest-crop"
CIP = DATA / "cip-ct64"
pytestmark = needs_fixtures(TS, CIP)

MEDIASTINUM, BONE, LUNG = (REGIONS.index(r) for r in ("mediastinum", "bone", "lung"))
SIZE = (48, 40, 24)        # (x, y, z), small: the tests stay fast
TINY = (64, 64, 16)        # the tiny model preset's input size
PAPER = (256, 256, 64)     # the paper's


def _write_like(arr: np.ndarray, ref: sitk.Image, path: Path) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def _scan(tmp: Path, volume: Path, regions: dict[int, np.ndarray], name: str) -> dict:
    """An ingested-like volume (.nii.gz, int16) and its uint16 label file; one binary file per region too."""
    img = sitk.ReadImage(str(volume))
    ct = sitk.GetArrayFromImage(img)
    vol_path = volume if volume.name.endswith(".nii.gz") else _write_like(ct, img, tmp / f"{name}_ct.nii.gz")
    label = np.zeros(ct.shape, dtype=np.uint16)
    files = {}
    for i, m in regions.items():
        label |= m.astype(np.uint16) << np.uint16(i)
        files[REGIONS[i]] = _write_like(m.astype(np.uint8), img, tmp / f"{name}_{i}.nii.gz")
    return {"volume": vol_path, "mask": _write_like(label, img, tmp / f"{name}_mask.nii.gz"), "ct": ct,
            "masks": regions, "files": files, "image": img}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scans")
    aorta = sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "aorta.nii.gz"))) > 0
    t12 = sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "vertebrae_T12.nii.gz"))) > 0
    lung = sitk.GetArrayFromImage(sitk.ReadImage(str(CIP / "wholeLung-64.nrrd"))) > 0
    return {
        "totalseg": _scan(tmp, TS / "ct_cropped.nii.gz", {MEDIASTINUM: aorta, BONE: t12}, "totalseg"),
        "cip": _scan(tmp, CIP / "ct-64.nrrd", {LUNG: lung}, "cip"),
    }


@pytest.mark.parametrize("name, size, global_from", [
    ("totalseg", SIZE, "sums"),
    ("cip", SIZE, "sums"),
    ("cip", (96, 96, 48), "ct"),  # a model input larger than the scan: the cache keeps the body crop instead
    ("totalseg", (8, 8, 4), "sums"),  # windows of thousands of voxels: uint16 counts, int32 sums
])
def test_cached_inputs_equal_the_direct_transform_and_the_authors_way(scans, name, size, global_from, tmp_path):
    s = scans[name]
    meta = cache_scan(s["volume"], s["mask"], tmp_path / f"{name}.safetensors", input_size=size)
    assert meta["global"]["from"] == global_from
    if size == (8, 8, 4):
        assert meta["global"]["dtype"] == "int32"
        assert {r["geometry"]["dtype"] for r in meta["regions"] if r["geometry"]} == {"uint16"}
    scan = read_cache(tmp_path / f"{name}.safetensors")
    assert scan.meta == meta and scan.input_size == size
    regions = sorted(s["masks"])
    assert scan.usable_regions == regions
    got = scan_inputs(scan, regions)
    z, y, x = size_zyx(size)
    assert got["global"].shape == (1, z, y, x) and got["texture"].shape == (len(regions), 1, z, y, x)

    ct, body = s["ct"], body_box(s["ct"])
    assert torch.allclose(got["global"], global_input(ct, size), atol=1e-5)
    ref = reference_inputs(s["volume"], s["files"], size)  # nibabel, float64, F.interpolate: the authors' way
    assert torch.allclose(got["global"], ref["global"], atol=1e-5)
    for k, i in enumerate(regions):
        m = s["masks"][i]
        assert torch.allclose(got["texture"][k], region_texture_input(ct, m, None, size), atol=1e-5)
        assert torch.allclose(got["texture"][k], ref["texture"][REGIONS[i]], atol=1e-5)
        assert torch.allclose(got["geometry"][k], region_geometry_input(m[body], size), atol=1e-6)
        assert torch.allclose(got["geometry"][k], ref["geometry"][REGIONS[i]], atol=1e-6)
    assert got["texture"].min() >= -1 and got["texture"].max() <= 1
    assert got["geometry"].min() >= 0 and got["geometry"].max() <= 1


def test_region_crop_holds_only_in_mask_hu_and_outside_value(scans, tmp_path):
    s = scans["totalseg"]
    cache_scan(s["volume"], s["mask"], tmp_path / "ts.safetensors", input_size=SIZE)
    scan = read_cache(tmp_path / "ts.safetensors")
    ct = s["ct"]
    offset = [sl.start for sl in body_box(ct)]
    for i, m in s["masks"].items():
        crop = scan.region_crop(i)
        full = tuple(slice(c.start + o, c.stop + o) for c, o in zip(crop, offset))
        assert full == bbox(m & (ct > -1000))  # the authors' crop: the region's voxels inside the body
        block = masked_crop(ct, m, full)
        inside = m[full]
        assert np.array_equal(block[inside], ct[full][inside])
        assert np.all(block[~inside] == OUTSIDE_HU) and (~inside).any()
        # the same from the cache's arrays
        cached = np.where(scan.region_mask(i)[scan.region_crop(i, relative=True)], scan.ct_in(crop), OUTSIDE_HU)
        assert np.array_equal(cached, block)


def test_body_crop_excludes_the_air_border(scans, tmp_path):
    s = scans["cip"]
    ct, img = s["ct"], s["image"]
    pad = ((3, 5), (7, 2), (4, 6))  # z, y, x: an air border of -1000 and -1024 HU, as scanners write outside the FOV
    air = np.where(np.random.default_rng(0).random([n + a + b for n, (a, b) in zip(ct.shape, pad)]) < 0.5, -1000, -1024)
    big = air.astype(np.int16)
    big[pad[0][0]:pad[0][0] + ct.shape[0], pad[1][0]:pad[1][0] + ct.shape[1], pad[2][0]:pad[2][0] + ct.shape[2]] = ct
    out = sitk.GetImageFromArray(big)
    sp = np.array(img.GetSpacing())
    out.SetSpacing(img.GetSpacing())
    out.SetOrigin(tuple(np.array(img.GetOrigin()) - sp * [pad[2][0], pad[1][0], pad[0][0]]))
    vol = tmp_path / "padded.nii.gz"
    sitk.WriteImage(out, str(vol), useCompression=True)
    label = np.zeros(big.shape, dtype=np.uint16)
    label[pad[0][0]:pad[0][0] + ct.shape[0], pad[1][0]:pad[1][0] + ct.shape[1], pad[2][0]:pad[2][0] + ct.shape[2]] = (
        s["masks"][LUNG].astype(np.uint16) << LUNG)
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(out)
    sitk.WriteImage(lab, str(tmp_path / "padded_mask.nii.gz"), useCompression=True)

    meta = cache_scan(vol, tmp_path / "padded_mask.nii.gz", tmp_path / "padded.safetensors", input_size=SIZE)
    inner = body_box(ct)
    start = [sl.start + p[0] for sl, p in zip(inner, pad)]
    assert meta["body"]["start"] == start[::-1]
    assert meta["body"]["size"] == [sl.stop - sl.start for sl in inner][::-1]
    box = tuple(slice(a, a + n) for a, n in zip(start, meta["body"]["size"][::-1]))
    outside = np.ones(big.shape, dtype=bool)
    outside[box] = False
    assert np.all(big[outside] <= -1000)
    expected_origin = np.array(out.GetOrigin()) + sp * np.array(start[::-1])
    assert np.allclose(meta["body"]["origin"], expected_origin)
    # the padded scan gives the same model inputs as the unpadded one
    base = cache_scan(s["volume"], s["mask"], tmp_path / "base.safetensors", input_size=SIZE)
    a = scan_inputs(read_cache(tmp_path / "padded.safetensors"), [LUNG])
    b = scan_inputs(read_cache(tmp_path / "base.safetensors"), [LUNG])
    assert base["body"]["size"] == meta["body"]["size"]
    for key in ("global", "texture", "geometry"):
        assert torch.allclose(a[key], b[key], atol=1e-6)


@pytest.mark.parametrize("name", ["totalseg", "cip"])
def test_cache_bytes_stay_within_twice_the_sources(scans, name, tmp_path):
    s = scans[name]
    sources = os.path.getsize(s["volume"]) + os.path.getsize(s["mask"])
    for size in (TINY, SIZE, PAPER):
        meta = cache_scan(s["volume"], s["mask"], tmp_path / f"{name}_{size[0]}.safetensors", input_size=size)
        cache = os.path.getsize(tmp_path / f"{name}_{size[0]}.safetensors")
        assert meta["bytes"] == cache
        assert cache <= 2 * sources, f"{name} at {size}: cache {cache} B vs sources {sources} B"


def test_rerun_skips_and_changes_rewrite(scans, tmp_path):
    s = scans["cip"]
    vol = tmp_path / "v.nii.gz"
    vol.write_bytes(Path(s["volume"]).read_bytes())
    out = tmp_path / "c.safetensors"
    cache_scan(vol, s["mask"], out, input_size=SIZE)
    stamps = (out.stat().st_mtime_ns, sidecar_path(out).stat().st_mtime_ns)
    cache_scan(vol, s["mask"], out, input_size=SIZE)
    assert (out.stat().st_mtime_ns, sidecar_path(out).stat().st_mtime_ns) == stamps
    os.utime(vol, ns=(stamps[0] + 10**9, stamps[0] + 10**9))  # touched, same content: checksum says unchanged
    cache_scan(vol, s["mask"], out, input_size=SIZE)
    assert out.stat().st_mtime_ns == stamps[0]
    cache_scan(vol, s["mask"], out, input_size=TINY)  # another input size: rebuilt
    assert json.loads(sidecar_path(out).read_text())["input_size"] == list(TINY)
    stamp = out.stat().st_mtime_ns
    ct = s["ct"].copy()
    ct[0, 0, 0] += 7
    _write_like(ct, s["image"], vol)  # new content: rebuilt
    cache_scan(vol, s["mask"], out, input_size=TINY)
    assert out.stat().st_mtime_ns != stamp
    assert read_cache(out).meta["sources"]["volume"]["bytes"] == vol.stat().st_size


def test_all_empty_masks_raise_input_error_naming_the_file(scans, tmp_path):
    s = scans["cip"]
    empty = _write_like(np.zeros(s["ct"].shape, dtype=np.uint16), s["image"], tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="empty.nii.gz.*no region mask has a voxel inside the body"):
        cache_scan(s["volume"], empty, tmp_path / "e.safetensors", input_size=SIZE)
    air = np.zeros(s["ct"].shape, dtype=np.uint16)
    air[s["ct"] <= -1000] = 1 << LUNG  # present, but only in air
    airy = _write_like(air, s["image"], tmp_path / "air.nii.gz")
    with pytest.raises(InputError, match="air.nii.gz"):
        cache_scan(s["volume"], airy, tmp_path / "a.safetensors", input_size=SIZE)
    assert not (tmp_path / "e.safetensors").exists() and not (tmp_path / "a.json").exists()


def test_bad_inputs_raise_input_error(scans, tmp_path):
    s = scans["cip"]
    other = sitk.GetImageFromArray(np.zeros((10, 10, 10), dtype=np.uint16))
    sitk.WriteImage(other, str(tmp_path / "grid.nii.gz"))
    with pytest.raises(InputError, match="grid.nii.gz.*differs from the volume"):
        cache_scan(s["volume"], tmp_path / "grid.nii.gz", tmp_path / "g.safetensors", input_size=SIZE)
    with pytest.raises(InputError, match="missing.nii.gz"):
        cache_scan(tmp_path / "missing.nii.gz", s["mask"], tmp_path / "m.safetensors", input_size=SIZE)
    with pytest.raises(InputError, match="cache sidecar not found"):
        read_cache(tmp_path / "nothing.safetensors")
    cache_scan(s["volume"], s["mask"], tmp_path / "ok.safetensors", input_size=SIZE)
    (tmp_path / "ok.safetensors").write_bytes(b"broken")
    with pytest.raises(InputError, match="ok.safetensors"):
        read_cache(tmp_path / "ok.safetensors")


def test_cache_manifest_reports_every_scan(scans, tmp_path):
    s = scans["totalseg"]
    empty = _write_like(np.zeros(s["ct"].shape, dtype=np.uint16), s["image"], tmp_path / "allempty.nii.gz")
    manifest = pd.DataFrame([
        {"case_id": "ts", "status": "included", "reason": "", "volume": str(s["volume"]), "mask": str(s["mask"])},
        {"case_id": "bad", "status": "included", "reason": "", "volume": str(s["volume"]), "mask": str(empty)},
        {"case_id": "off", "status": "excluded", "reason": "ingest failed: truncated file", "volume": None,
         "mask": None},
    ])
    status = cache_manifest(manifest, tmp_path / "cache", threads=1, input_size=SIZE)
    rows = {r.case_id: r for r in status.itertuples()}
    assert list(status.case_id) == ["bad", "off", "ts"]
    assert rows["ts"].status == "ok" and rows["ts"].cache == str(tmp_path / "cache" / "ts.safetensors")
    assert 0 < rows["ts"].cache_bytes <= 2 * rows["ts"].source_bytes
    assert rows["off"].status == "skipped" and rows["off"].reason == "ingest failed: truncated file"
    assert rows["bad"].status == "error" and "allempty.nii.gz" in rows["bad"].reason
    assert pd.isna(rows["bad"].cache)
    status.to_parquet(tmp_path / "status.parquet")  # the rule's output


def test_windowed_volumes_reach_the_model_as_x_over_255(tmp_path):
    """An 8-bit windowed volume (CTRG) is normalised as x / 255 * 2 - 1, not clamped as HU."""
    from reg2rg.layouts.ctrg import windowed_to_model_range
    from reg2rg.transforms import normalize_hu, scan_inputs, windowed_to_hu_scale

    levels = np.arange(256, dtype=np.int16)
    assert np.allclose(normalize_hu(windowed_to_hu_scale(levels)), windowed_to_model_range(levels), atol=1e-3)

    rng = np.random.default_rng(0)
    vol = np.zeros((16, 32, 32), np.int16)
    vol[2:14, 4:28, 4:28] = rng.integers(1, 256, (12, 24, 24))
    mask = np.zeros(vol.shape, np.uint16)
    mask[2:14, 4:28, 4:28] = 1 << REGIONS.index("lung")
    ref = sitk.GetImageFromArray(vol)
    vpath, mpath = tmp_path / "w.nii.gz", tmp_path / "m.nii.gz"
    sitk.WriteImage(ref, str(vpath))
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(ref)
    sitk.WriteImage(m, str(mpath))
    size = (24, 24, 12)  # the body crop's own size (x, y, z): resizing is the identity
    cache_scan(vpath, mpath, tmp_path / "w.safetensors", size, intensity_mode="windowed")
    scan = read_cache(tmp_path / "w.safetensors")
    assert scan.meta["intensity_mode"] == "windowed"
    glob = scan_inputs(scan, [REGIONS.index("lung")])["global"][0].numpy()
    assert np.allclose(glob, windowed_to_model_range(vol[2:14, 4:28, 4:28]), atol=1e-3)
    # The same file cached as HU is a different cache (rebuilt, not reused) and clamps to the window's top.
    cache_scan(vpath, mpath, tmp_path / "w.safetensors", size)
    hu = scan_inputs(read_cache(tmp_path / "w.safetensors"), [REGIONS.index("lung")])["global"][0].numpy()
    assert not np.allclose(hu, glob, atol=1e-2)
