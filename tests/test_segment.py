"""SAT import (reg2rg.segment): synthetic SAT-format outputs built here from a known mask the way SAT's own
code does it (nibabel reads our input, RAS orientation, 1 x 1 x 3 mm, crop to voxels > 0, identity affine on
the written arrays) must come back onto the ingested grid voxel for voxel; unions of prompts, missing prompts,
a wrong crop, other spacings and windowed volumes."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from reg2rg.constants import REGIONS
from reg2rg.errors import InputError
from reg2rg.masks import read_region_masks
from reg2rg.segment import sat
from reg2rg.segment.stage import import_inventory, prepare_inventory

ONE = {r: [r] for r in REGIONS}  # one prompt per region, named after it


def _volume(tmp_path, spacing=(1.0, 1.0, 3.0), size=(40, 36, 14), origin=(-17.5, 22.0, -301.0), name="vol"):
    """An ingested-like volume (int16 HU, identity direction) with a body that touches no border, air
    outside, and exact zeros inside; returns (path, array [z, y, x])."""
    nx, ny, nz = size
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx]
    body = ((x - nx * 0.45) / (nx * 0.35)) ** 2 + ((y - ny * 0.55) / (ny * 0.33)) ** 2 <= 1
    body &= (z >= 1) & (z <= nz - 3)
    arr = np.full((nz, ny, nx), -1000, np.int16)
    arr[body] = 40
    arr[body & (x % 7 == 0)] = 0  # exact zeros: not foreground for SAT's crop
    arr[body & (y < ny * 0.4)] = -850  # lung-like part, still inside the body
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path = tmp_path / f"{name}.nii.gz"
    sitk.WriteImage(img, str(path))
    return path, arr


def _known_masks(arr) -> dict[str, np.ndarray]:
    """Asymmetric masks (a flip or a shift would show) inside and partly outside the body."""
    nz, ny, nx = arr.shape
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx]
    masks = {r: np.zeros(arr.shape, bool) for r in REGIONS}
    masks["heart"] = ((x - 12) ** 2 + (y - 22) ** 2 < 30) & (z > 3) & (z < 9)
    masks["lung"] = (arr == -850) & (x > 8)
    masks["bone"] = (x == 30) & (y > 18) & (z % 2 == 0)
    masks["trachea and bronchie"] = (x == 15) & (y == 14)
    # SAT only sees (and can only segment) its crop: the body's bounding box
    fg = np.argwhere(arr > 0)
    lo, hi = fg.min(0), fg.max(0) + 1
    inside = np.zeros(arr.shape, bool)
    inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return {r: m & inside for r, m in masks.items()}


def _sat_like_output(sat_input: str, mask_zyx, origin_lps, spacing) -> np.ndarray:
    """What SAT writes for a known mask, built from SAT's view of its input: nibabel's array and affine
    (RAS, axis codes must be R, A, S and the spacing 1, 1, 3 so that Orientationd and Spacingd change
    nothing), the foreground crop (> 0, [first, last + 1)), each RAS voxel looked up in physical space."""
    img = nib.load(sat_input)
    arr = np.asanyarray(img.dataobj)
    aff = img.affine
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    assert np.allclose(np.sqrt((aff[:3, :3] ** 2).sum(0)), [1, 1, 3])
    idx = np.argwhere(arr > 0)
    lo, hi = idx.min(0), idx.max(0) + 1
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")
    world = aff @ np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    lps = np.stack([-world[0], -world[1], world[2]])
    index = np.rint((lps - np.asarray(origin_lps)[:, None]) / np.asarray(spacing)[:, None]).astype(int)
    nz, ny, nx = mask_zyx.shape
    inside = (index[0] >= 0) & (index[0] < nx) & (index[1] >= 0) & (index[1] < ny) & (index[2] >= 0) & (index[2] < nz)
    out = np.zeros(ii.size, np.float32)
    out[inside] = mask_zyx[index[2][inside], index[1][inside], index[0][inside]]
    return out.reshape(arr.shape)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]


def _write_sat(folder, case_id, labels: dict[str, np.ndarray]):
    seg = folder / f"seg_{case_id}"
    seg.mkdir(parents=True, exist_ok=True)
    for label, m in labels.items():
        nib.save(nib.Nifti1Image(m.astype(np.float32), np.eye(4)), str(seg / f"{label}.nii.gz"))


def test_monai_crop_box_semantics():
    a = np.full((5, 6, 7), -5.0)
    a[1, 2, 3] = 1
    a[3, 4, 3] = 2
    assert sat.foreground_box(a) == ([1, 2, 3], [4, 5, 4])
    assert sat.foreground_box(np.zeros((3, 3, 3))) == ([0, 0, 0], [0, 0, 0])


def test_round_trip_voxel_for_voxel(tmp_path):
    vol, arr = _volume(tmp_path)
    rec = sat.prepare_sat_input(vol, tmp_path / "in" / "case1.nii.gz", tmp_path / "in" / "case1.json", "case1")
    assert rec["sat_input"]["steps"][0]["step"] == "zero_to_minus_one"  # no voxel sits at SAT's threshold
    sat_arr = np.asanyarray(nib.load(tmp_path / "in" / "case1.nii.gz").dataobj)
    assert sat_arr.dtype == np.int16 and not (sat_arr == 0).any()
    masks = _known_masks(arr)
    origin, spacing = [-17.5, 22.0, -301.0], [1.0, 1.0, 3.0]
    out = tmp_path / "sat_out"
    labels = {r: _sat_like_output(str(tmp_path / "in" / "case1.nii.gz"), masks[r], origin, spacing)
              for r in ("heart", "lung", "bone", "trachea and bronchie")}
    box = [e - s for s, e in zip(rec["crop"]["start"], rec["crop"]["end"])]
    assert list(labels["heart"].shape) == box and box != list(sat_arr.shape)  # SAT's grid is a real crop
    # the lung as two prompts (a union), split left / right
    left = labels["lung"].copy()
    left[: left.shape[0] // 2] = 0
    labels["right lung"] = labels["lung"] - left
    labels["left lung"] = left
    del labels["lung"]
    _write_sat(out, "case1", labels)
    prompts = dict(ONE, lung=["left lung", "right lung"])
    side = sat.import_sat_case(vol, out, tmp_path / "in" / "case1.json", prompts, tmp_path / "masks" / "case1.nii.gz",
                               tmp_path / "work")
    got, side2 = read_region_masks(tmp_path / "masks" / "case1.nii.gz")
    for i, r in enumerate(REGIONS):
        assert np.array_equal(got[i], masks[r]), r  # voxel for voxel
    assert side2["status"]["heart"] == "present" and side2["resampled"]["heart"] is False
    assert side2["status"]["thyroid"] == "missing" and "SAT wrote no file" in side2["notes"]["thyroid"]
    assert side2["segmentation"]["regions"]["lung"]["found"] == ["left lung", "right lung"]
    assert side == side2


def test_forward_transform_matches_sats_view(tmp_path):
    """to_sat_grid (what the demo's stand-in for a SAT run writes) equals the independent construction."""
    vol, arr = _volume(tmp_path)
    rec = sat.prepare_sat_input(vol, tmp_path / "c.nii.gz", tmp_path / "c.json", "c")
    mask = _known_masks(arr)["heart"]
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.CopyInformation(sitk.ReadImage(str(vol)))
    ours = sat.to_sat_grid(img, rec)
    theirs = _sat_like_output(str(tmp_path / "c.nii.gz"), mask, [-17.5, 22.0, -301.0], [1, 1, 3])
    assert np.array_equal(ours, theirs > 0)
    back = sitk.GetArrayFromImage(sat.restore_sat_mask(ours, rec))
    assert np.array_equal(back > 0, mask)


def test_wrong_crop_or_missing_output_fails_loudly(tmp_path):
    vol, arr = _volume(tmp_path)
    rec = sat.prepare_sat_input(vol, tmp_path / "c.nii.gz", tmp_path / "c.json", "c")
    good = _sat_like_output(str(tmp_path / "c.nii.gz"), _known_masks(arr)["heart"], [-17.5, 22.0, -301.0], [1, 1, 3])
    _write_sat(tmp_path / "out", "c", {"heart": good[1:]})  # one voxel fewer than the crop
    with pytest.raises(InputError, match="not the crop of SAT's input"):
        sat.import_sat_case(vol, tmp_path / "out", tmp_path / "c.json", ONE, tmp_path / "m.nii.gz", tmp_path / "w")
    with pytest.raises(InputError, match="no output folder"):
        sat.import_sat_case(vol, tmp_path / "nothing", tmp_path / "c.json", ONE, tmp_path / "m.nii.gz", tmp_path / "w")
    assert rec["crop"]["end"] != [0, 0, 0]


def test_other_spacing_is_resampled_for_sat_and_placed_back_in_physical_space(tmp_path):
    vol, arr = _volume(tmp_path, spacing=(0.8, 0.8, 2.5), size=(50, 44, 16))
    rec = sat.prepare_sat_input(vol, tmp_path / "c.nii.gz", tmp_path / "c.json", "c")
    assert rec["sat_input"]["steps"][0]["step"] == "resample"
    assert nib.load(tmp_path / "c.nii.gz").header.get_zooms() == (1.0, 1.0, 3.0)
    nz, ny, nx = arr.shape
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx]
    mask = ((x - 20) ** 2 + (y - 25) ** 2 < 60) & (z > 4) & (z < 11)
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.CopyInformation(sitk.ReadImage(str(vol)))
    _write_sat(tmp_path / "out", "c", {"heart": sat.to_sat_grid(img, rec)})
    sat.import_sat_case(vol, tmp_path / "out", tmp_path / "c.json", ONE, tmp_path / "m.nii.gz", tmp_path / "w")
    got, side = read_region_masks(tmp_path / "m.nii.gz")
    heart = got[REGIONS.index("heart")]
    dice = 2 * (heart & mask).sum() / (heart.sum() + mask.sum())
    assert dice > 0.85 and side["resampled"]["heart"] is True
    assert np.abs(np.argwhere(heart).mean(0) - np.argwhere(mask).mean(0)).max() < 0.6  # no shift


def test_windowed_volume_is_mapped_to_approximate_hu(tmp_path):
    arr = np.zeros((12, 30, 32), np.int16)
    arr[2:10, 5:25, 6:26] = 240  # soft tissue (about +60 HU) in a lung window
    arr[4:8, 8:14, 8:14] = 30  # lung
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1, 1, 3))
    sitk.WriteImage(img, str(tmp_path / "w.nii.gz"))
    rec = sat.prepare_sat_input(tmp_path / "w.nii.gz", tmp_path / "c.nii.gz", tmp_path / "c.json", "c",
                                intensity_mode="windowed")
    hu = np.asanyarray(nib.load(tmp_path / "c.nii.gz").dataobj)
    assert hu.min() == -1350 and hu.max() == round(-1350 + 240 / 255 * 1500) > 0
    assert [s["step"] for s in rec["sat_input"]["steps"]] == ["windowed_to_hu"]
    assert rec["crop"]["end"][2] - rec["crop"]["start"][2] == 8  # the body, not the whole volume


def test_prompt_mapping_defaults_and_overrides():
    p = sat.region_prompts({"Thyroid": ["Thyroid Gland"], "pleura": []})
    assert p["thyroid"] == ["thyroid gland"] and p["pleura"] == []
    assert p["trachea and bronchie"] == ["trachea", "bronchie"] and list(p) == list(REGIONS)
    assert len(sat.all_prompts(p)) == len(set(sat.all_prompts(p)))
    from reg2rg.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown region"):
        sat.region_prompts({"spleen": ["spleen"]})


def test_stage_over_an_inventory(tmp_path):
    import pandas as pd

    vols = tmp_path / "volumes"
    vols.mkdir()
    _, arr = _volume(vols, name="a")
    _volume(vols, name="b")
    inv = pd.DataFrame({"case_id": ["a", "b", "c"], "intensity_mode": ["hu"] * 3})
    vstatus = pd.DataFrame({"case_id": ["a", "b", "c"], "status": ["ok", "ok", "error"], "reason": ["", "", "bad"]})
    st = prepare_inventory(inv, vstatus, vols, tmp_path / "in", tmp_path / "sat.jsonl", prompts=ONE, sat_dataset="ds")
    assert list(st.status) == ["ok", "ok", "skipped"]
    lines = [json.loads(line) for line in (tmp_path / "sat.jsonl").read_text().splitlines()]
    assert [d["image"].endswith(f"{c}.nii.gz") for d, c in zip(lines, "ab")] == [True, True]
    assert lines[0]["label"] == list(REGIONS) and lines[0]["modality"] == "ct" and lines[0]["dataset"] == "ds"
    heart = _sat_like_output(str(tmp_path / "in" / "a.nii.gz"), _known_masks(arr)["heart"],
                             [-17.5, 22.0, -301.0], [1, 1, 3])
    _write_sat(tmp_path / "out" / "ds", "a", {"heart": heart})
    status = import_inventory(inv, st, vols, tmp_path / "in", tmp_path / "out" / "ds", tmp_path / "masks",
                              tmp_path / "work", prompts=ONE)
    assert list(status.status) == ["ok", "error", "skipped"]
    assert "no output folder" in status.reason[1]
    got, _ = read_region_masks(tmp_path / "masks" / "a.nii.gz")
    assert np.array_equal(got[REGIONS.index("heart")], _known_masks(arr)["heart"])


def test_lung_window_caps_bone_and_contrast_at_150_hu_on_a_real_ct():
    """The measurement of docs/ctrg.md: a real contrast chest CT (totalseg-chest-crop, HU) stored as an 8-bit lung
    window and mapped back by windowed_to_hu. Every voxel above +150 HU comes back as exactly +150: the T12 vertebra
    and the contrast-filled aorta, 162 HU apart in the median before, are the same value after."""
    import SimpleITK as sitk

    from conftest import SHARED_DATA

    d = SHARED_DATA / "totalseg-chest-crop"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "ct_cropped.nii.gz"))).astype(np.float32)
    t12 = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "vertebrae_T12.nii.gz"))) > 0
    aorta = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "aorta.nii.gz"))) > 0
    w = sat.DEFAULT_WINDOW
    stored = np.clip(np.round((ct - (w["center"] - w["width"] / 2)) / w["width"] * 255), 0, 255)
    back = sat.windowed_to_hu(stored)
    assert back.max() == 150 and np.all(back[ct > 150] == 150)
    assert 0.6 < (ct[t12] > 150).mean() < 0.65 and 0.8 < (ct[aorta] > 150).mean() < 0.82
    assert round(float(np.median(ct[t12]) - np.median(ct[aorta]))) == -162
    assert np.median(back[t12]) == np.median(back[aorta]) == 150
    assert (ct >= 200).sum() > 300_000 and (back >= 200).sum() == 0  # a >= 200 HU bone threshold finds nothing
