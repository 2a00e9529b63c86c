"""Region masks: physical-space placement on real files, packing, and every bad-input status."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reg2rg.constants import REGIONS
from reg2rg.errors import InputError
from reg2rg.masks import (
    import_region_masks,
    pack_masks,
    radgenome_mask_files,
    read_region_masks,
    sidecar_path,
    unpack_label_map,
)

from conftest import SHARED_DATA as DATA, needs_fixtures
TS = DATA / "totalseg-chest-crop"
CIP = DATA / "cip-ct64"
pytestmark = needs_fixtures(TS, CIP)

HEART, LUNG, ABDOMEN, BONE = (REGIONS.index(r) for r in ("heart", "lung", "abdomen", "bone"))


def _arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def ct_volume() -> Path:
    """ct_cropped.nii.gz as the ingested volume: it must be canonical (identity direction in LPS)."""
    img = sitk.ReadImage(str(TS / "ct_cropped.nii.gz"))
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection()) == "LPS"
    assert img.GetPixelID() == sitk.sitkInt16
    return TS / "ct_cropped.nii.gz"


@pytest.fixture(scope="module")
def totalseg_import(ct_volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("ts") / "case.nii.gz"
    side = import_region_masks(
        ct_volume,
        {
            "heart": TS / "heart_on_larger_grid.nii.gz",
            "abdomen": TS / "aorta.nii.gz",
            "bone": TS / "vertebrae_T12.nii.gz",
        },
        out,
    )
    return out, side


def test_heart_on_larger_grid_lands_in_physical_place(ct_volume, totalseg_import):
    out, side = totalseg_import
    masks, side2 = read_region_masks(out)
    assert side2 == side
    heart = masks[HEART]
    src = _arr(TS / "heart_on_larger_grid.nii.gz") > 0  # [z, y, x], 191 x 167 x 233
    assert src.shape == (191, 167, 233)
    # README: equals slicing [72:192, 13:139, 0:164] of the larger array, in ITK [x, y, z] order.
    expected = src[0:164, 13:139, 72:192]
    assert heart.shape == expected.shape == (164, 126, 120)
    assert np.array_equal(heart, expected)
    assert side["status"]["heart"] == "present"
    assert side["resampled"]["heart"] is True
    assert side["voxels"]["heart"] == int(expected.sum()) > 0

    # Aligning by array index (the first 120 x 126 x 164 block) would be wrong: this is what the test guards.
    naive = src[:164, :126, :120]
    assert not np.array_equal(heart, naive)
    dice = 2 * (heart & naive).sum() / (heart.sum() + naive.sum())
    assert dice < 0.5

    # The placed heart overlaps the contrast-filled heart of the CT; the naive block does much less so.
    ct = _arr(ct_volume)
    assert np.median(ct[heart]) > 150
    assert np.median(ct[naive]) < np.median(ct[heart]) - 300


def test_same_grid_masks_unchanged(totalseg_import):
    out, side = totalseg_import
    masks, _ = read_region_masks(out)
    for region, name in (("abdomen", "aorta.nii.gz"), ("bone", "vertebrae_T12.nii.gz")):
        src = _arr(TS / name) > 0
        i = REGIONS.index(region)
        assert np.array_equal(masks[i], src)
        assert side["voxels"][region] == int(src.sum()) > 0
        assert side["status"][region] == "present"
        assert side["resampled"][region] is False
    for region in set(REGIONS) - {"heart", "abdomen", "bone"}:
        assert side["status"][region] == "missing"
        assert not masks[REGIONS.index(region)].any()


def test_output_geometry_and_sidecar(ct_volume, totalseg_import):
    out, side = totalseg_import
    vol, lab = sitk.ReadImage(str(ct_volume)), sitk.ReadImage(str(out))
    assert lab.GetPixelID() == sitk.sitkUInt16
    assert lab.GetSize() == vol.GetSize()
    assert np.allclose(lab.GetSpacing(), vol.GetSpacing())
    assert np.allclose(lab.GetOrigin(), vol.GetOrigin(), atol=1e-4)
    assert np.allclose(lab.GetDirection(), vol.GetDirection())
    on_disk = json.loads(sidecar_path(out).read_text())
    assert sidecar_path(out).name == "case.json"
    assert on_disk == side
    assert on_disk["regions"] == list(REGIONS)
    assert set(on_disk["status"]) == set(REGIONS)
    assert on_disk["sources"]["heart"]["sha256"] and on_disk["sources"]["lung"]["sha256"] is None
    assert on_disk["volume"]["size"] == [120, 126, 164]


def test_cache_skips_then_recomputes(ct_volume, tmp_path):
    out = tmp_path / "c.nii.gz"
    mask = tmp_path / "aorta.nii.gz"
    mask.write_bytes((TS / "aorta.nii.gz").read_bytes())
    import_region_masks(ct_volume, {"abdomen": mask}, out)
    mtime = out.stat().st_mtime_ns
    import_region_masks(ct_volume, {"abdomen": mask}, out)
    assert out.stat().st_mtime_ns == mtime  # skipped
    mask.write_bytes((TS / "vertebrae_T12.nii.gz").read_bytes())  # source changed -> recomputed
    side = import_region_masks(ct_volume, {"abdomen": mask}, out)
    assert side["voxels"]["abdomen"] == int((_arr(TS / "vertebrae_T12.nii.gz") > 0).sum())


def test_cip_lung_mean_hu(tmp_path):
    out = tmp_path / "cip.nii.gz"
    side = import_region_masks(CIP / "ct-64.nrrd", {"lung": CIP / "wholeLung-64.nrrd"}, out)
    assert side["status"]["lung"] == "present" and side["resampled"]["lung"] is False
    masks, _ = read_region_masks(out)
    ct = _arr(CIP / "ct-64.nrrd")
    assert abs(float(ct[masks[LUNG]].mean()) - (-874)) < 5


def test_other_orientation_and_spacing_placed_physically(tmp_path):
    """The CIP lung mask flipped to RAS and resampled to 2x coarser spacing still lands on the lung."""
    lung = sitk.ReadImage(str(CIP / "wholeLung-64.nrrd"))
    ras = sitk.DICOMOrient(lung, "RAS")
    assert not np.allclose(ras.GetDirection(), lung.GetDirection())
    ras_path = tmp_path / "lung_ras.nii.gz"
    sitk.WriteImage(ras, str(ras_path))
    side = import_region_masks(CIP / "ct-64.nrrd", {"lung": ras_path}, tmp_path / "a.nii.gz")
    assert side["resampled"]["lung"] is True
    masks, _ = read_region_masks(tmp_path / "a.nii.gz")
    assert np.array_equal(masks[LUNG], _arr(CIP / "wholeLung-64.nrrd") > 0)  # permutation/flip is exact

    coarse = sitk.Resample(ras, [s // 2 for s in ras.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           ras.GetOrigin(), [s * 2 for s in ras.GetSpacing()], ras.GetDirection(), 0)
    coarse_path = tmp_path / "lung_coarse.nii.gz"
    sitk.WriteImage(coarse, str(coarse_path))
    import_region_masks(CIP / "ct-64.nrrd", {"lung": coarse_path}, tmp_path / "b.nii.gz")
    masks_b, _ = read_region_masks(tmp_path / "b.nii.gz")
    ref = _arr(CIP / "wholeLung-64.nrrd") > 0
    dice = 2 * (masks_b[LUNG] & ref).sum() / (masks_b[LUNG].sum() + ref.sum())
    assert dice > 0.85


def test_pack_round_trip_overlapping():
    rng = np.random.default_rng(0)
    masks = rng.random((len(REGIONS), 5, 6, 7)) < 0.4  # plenty of overlaps
    masks[:, 0, 0, 0] = True  # all 10 on one voxel
    label = pack_masks(masks)
    assert label.dtype == np.uint16
    assert label[0, 0, 0] == 2 ** len(REGIONS) - 1
    assert np.array_equal(unpack_label_map(label), masks)
    with pytest.raises(ValueError):
        unpack_label_map(np.full((2, 2), 1 << 12, dtype=np.uint16))


def test_bad_region_files_are_recorded_not_raised(tmp_path):
    ref = sitk.ReadImage(str(CIP / "wholeLung-64.nrrd"))
    empty = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ref)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    (tmp_path / "garbage.nii.gz").write_bytes(b"this is not an image\x00\x01\x02" * 50)
    far = sitk.Image(ref)
    far.SetOrigin([o + 1000.0 for o in ref.GetOrigin()])  # a metre away: nothing lands in the volume
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    # Overlapping masks on two regions through the whole import.
    sitk.WriteImage(ref, str(tmp_path / "lung.nii.gz"))
    pleura = sitk.BinaryDilate(ref > 0, [1, 1, 1])
    sitk.WriteImage(pleura, str(tmp_path / "pleura.nii.gz"))

    out = tmp_path / "bad.nii.gz"
    side = import_region_masks(
        CIP / "ct-64.nrrd",
        {
            "lung": tmp_path / "lung.nii.gz",
            "Pleura ": tmp_path / "pleura.nii.gz",  # names match case-insensitively, stripped
            "heart": tmp_path / "empty.nii.gz",
            "bone": tmp_path / "garbage.nii.gz",
            "abdomen": tmp_path / "far.nii.gz",
            "thyroid": tmp_path / "does_not_exist.nii.gz",
            "breast": None,
        },
        out,
    )
    st = side["status"]
    assert st["lung"] == "present" and st["pleura"] == "present"
    assert st["heart"] == "empty" and side["voxels"]["heart"] == 0
    assert st["bone"].startswith("error: ") and side["sources"]["bone"]["sha256"]
    assert st["abdomen"] == "outside" and side["source_voxels"]["abdomen"] > 0 and side["voxels"]["abdomen"] == 0
    assert "none inside the volume" in side["notes"]["abdomen"]
    assert st["thyroid"] == "missing" and st["breast"] == "missing" and st["esophagus"] == "missing"

    masks, _ = read_region_masks(out)
    lung, pl = masks[LUNG], masks[REGIONS.index("pleura")]
    assert np.array_equal(lung, _arr(CIP / "wholeLung-64.nrrd") > 0)
    assert np.array_equal(pl, sitk.GetArrayFromImage(pleura) > 0)
    assert (lung & pl).sum() == lung.sum() > 0  # overlap kept: both bits set
    assert masks.sum(axis=(1, 2, 3))[[HEART, BONE, ABDOMEN]].tolist() == [0, 0, 0]


def test_unknown_region_name_and_bad_volume(tmp_path):
    with pytest.raises(ValueError, match="spleen"):
        import_region_masks(CIP / "ct-64.nrrd", {"spleen": None}, tmp_path / "x.nii.gz")
    with pytest.raises(InputError, match="volume"):
        import_region_masks(tmp_path / "nope.nii.gz", {}, tmp_path / "x.nii.gz")


def test_radgenome_mask_files(tmp_path):
    seg = tmp_path / "train_region_mask" / "seg_train_10019_a_1"
    seg.mkdir(parents=True)
    for r in ("lung", "trachea and bronchie", "heart"):
        (seg / f"{r}.nii.gz").write_bytes(b"")
    files = radgenome_mask_files(tmp_path / "train_region_mask", "train_10019_a_1")
    assert list(files) == list(REGIONS)
    assert files["trachea and bronchie"] == seg / "trachea and bronchie.nii.gz"
    assert files["lung"] == seg / "lung.nii.gz"
    assert files["bone"] is None
    assert all(v is None for v in radgenome_mask_files(tmp_path / "train_region_mask", "other").values())


def test_masks_inventory_per_scan_status(tmp_path):
    """The workflow step: every inventory scan gets a status row; bad files inside a scan stay per region."""
    import pandas as pd

    from reg2rg.masks import masks_inventory

    vols = tmp_path / "volumes"
    vols.mkdir()
    for c in ("a", "b", "c"):
        sitk.WriteImage(sitk.ReadImage(str(CIP / "ct-64.nrrd")), str(vols / f"{c}.nii.gz"))
    seg = tmp_path / "train_region_mask"
    (seg / "seg_a").mkdir(parents=True)
    sitk.WriteImage(sitk.ReadImage(str(CIP / "wholeLung-64.nrrd")), str(seg / "seg_a" / "lung.nii.gz"))
    (seg / "seg_a" / "trachea and bronchie.nii.gz").write_bytes(b"garbage")
    inv = pd.DataFrame({"case_id": ["a", "b", "c", "d"],
                        "mask_dir": ["train_region_mask/seg_a", "train_region_mask/seg_b", None,
                                     "train_region_mask/seg_d"]})
    ingest = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "status": ["ok", "ok", "ok", "error"],
                           "reason": ["", "", "", "bad"]})
    status = masks_inventory(inv, ingest, vols, tmp_path / "masks", tmp_path, threads=1).set_index("case_id")
    assert status.loc["a", "status"] == "ok"
    assert status.loc["b", "status"] == "error"
    assert status.loc["b", "reason"] == "train_region_mask/seg_b: mask folder not found"  # under the root
    assert status.loc["c", "status"] == "error" and "no mask folder" in status.loc["c", "reason"]
    assert status.loc["d", "status"] == "skipped"
    masks, side = read_region_masks(tmp_path / "masks" / "a.nii.gz")
    assert side["status"]["lung"] == "present" and side["status"]["trachea and bronchie"].startswith("error")
    assert masks[LUNG].sum() == side["voxels"]["lung"] > 0
