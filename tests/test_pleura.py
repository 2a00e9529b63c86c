"""The pleura region, derived from the lung masks (reg2rg.segment.derived; SAT has no pleura class): the shell's
margin is in mm on an anisotropic grid, not in voxels; the body and the other regions bound it; on a real chest
CT with a real lung mask it is tissue, not air, and holds a simulated effusion; through the SAT import path the
default prompts do not ask SAT for pleura and the imported pleura is the derivation, voxel for voxel."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, needs_fixtures
from reg2rg.constants import REGIONS
from reg2rg.errors import ConfigError
from reg2rg.segment import sat
from reg2rg.segment.derived import PLEURA_MARGIN_MM, body_mask, pleural_space

CIP = SHARED_DATA / "cip-ct64"
needs_cip = needs_fixtures(CIP)


def test_margin_is_in_mm_on_an_anisotropic_grid():
    """One lung voxel at the centre of a [z, y, x] grid of 3 x 1 x 0.5 mm: the 6 mm shell is the ellipsoid of
    voxel centres within 6 mm, i.e. 2 voxels along z, 6 along y, 12 along x."""
    spacing = (3.0, 1.0, 0.5)
    shape = (9, 17, 31)
    c = (4, 8, 15)
    lungs = np.zeros(shape, bool)
    lungs[c] = True
    got = pleural_space(lungs, spacing, margin_mm=6.0)
    z, y, x = np.indices(shape)
    d = np.sqrt(((z - c[0]) * 3.0) ** 2 + ((y - c[1]) * 1.0) ** 2 + ((x - c[2]) * 0.5) ** 2)
    assert np.array_equal(got, (d <= 6.0) & ~lungs)
    for axis, reach in ((0, 2), (1, 6), (2, 12)):
        line = [slice(v, v + 1) for v in c]
        line[axis] = slice(None)
        hits = np.flatnonzero(got[tuple(line)].ravel())
        assert hits.min() == c[axis] - reach and hits.max() == c[axis] + reach, axis
    # the same lung with the spacing read as voxels (1 mm isotropic) would be a sphere of radius 6 voxels
    assert got.sum() < pleural_space(lungs, (1, 1, 1), margin_mm=6.0).sum()


def test_shell_is_outside_the_lungs_inside_the_body_and_outside_other_regions():
    spacing = (2.0, 1.0, 1.0)
    z, y, x = np.indices((20, 60, 60))
    lungs = ((y - 30) ** 2 + (x - 20) ** 2 < 100) & (z >= 4) & (z < 16)
    body = ((y - 30) ** 2 + (x - 30) ** 2 < 26 ** 2)
    heart = (x >= 30) & (x < 40)
    got = pleural_space(lungs, spacing, margin_mm=5.0, body=body, exclude=heart)
    full = pleural_space(lungs, spacing, margin_mm=5.0)
    assert got.any() and not (got & lungs).any()
    assert np.array_equal(got, full & body & ~heart)
    # a lung that touches the array's border: the shell stops at the border, nothing wraps round
    edge = np.zeros((5, 8, 8), bool)
    edge[:, :, 0] = True
    shell = pleural_space(edge, (1, 1, 1), margin_mm=2.0)
    assert np.array_equal(np.flatnonzero(shell.any(axis=(0, 1))), [1, 2])
    assert not pleural_space(np.zeros((4, 4, 4), bool), (1, 1, 1)).any()
    with pytest.raises(ValueError, match="spacing"):
        pleural_space(edge, (1, 1), margin_mm=2.0)
    with pytest.raises(ValueError, match="margin_mm"):
        pleural_space(edge, (1, 1, 1), margin_mm=0)


def test_body_fills_the_chest_and_drops_the_table():
    hu = np.full((3, 40, 40), -1000.0)
    y, x = np.indices((40, 40))
    hu[:, (y - 18) ** 2 + (x - 20) ** 2 < 15 ** 2] = 40  # the trunk
    hu[:, (y - 18) ** 2 + (x - 14) ** 2 < 5 ** 2] = -850  # a lung, enclosed by the chest wall
    hu[1, (y - 18) ** 2 + (x - 26) ** 2 < 3 ** 2] = -1000  # air in the chest (a pneumothorax)
    hu[:, 37:39, 5:35] = 100  # the table, apart from the patient
    body = body_mask(hu)
    assert body[:, 18, 14].all() and body[1, 18, 26]
    assert not body[:, 38].any() and not body[:, 0, 0].any()
    assert body.sum() == 3 * int(((y - 18) ** 2 + (x - 20) ** 2 < 15 ** 2).sum())


def _cip():
    ct = sitk.ReadImage(str(CIP / "ct-64.nrrd"))
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(CIP / "wholeLung-64.nrrd"))) > 0
    return sitk.GetArrayFromImage(ct).astype(np.float32), lungs, ct.GetSpacing()[::-1]


@needs_cip
def test_on_a_real_chest_ct_the_shell_is_tissue_and_holds_an_effusion():
    """cip-ct64 (4.17 x 4.17 x 3.99 mm, real lung mask; the contrast fixture has no lung mask): the 20 mm shell
    lies in the body, is tissue rather than air, and contains a simulated posterior effusion of 15 mm."""
    hu, lungs, spacing = _cip()
    body = body_mask(hu)
    assert (lungs & body).sum() == lungs.sum()
    shell = pleural_space(lungs, spacing, body=body)
    assert PLEURA_MARGIN_MM == 20.0
    vox_ml = float(np.prod(spacing)) / 1000
    assert 4000 < shell.sum() * vox_ml < 6000  # about 4.9 l around 4.6 l of lung, before other organs are removed
    h = hu[shell]
    assert (h < -900).mean() < 0.01  # not the air around the patient
    assert ((h >= -200) & (h <= 100)).mean() > 0.75  # fat, soft tissue, fluid (measured 0.79)
    assert (pleural_space(lungs, spacing, 10.0, body=body) <= shell).all()
    # an effusion: the most posterior 15 mm of lung in every (z, x) column with more than 30 mm of lung turns to
    # fluid (not lung any more): it must lie in the shell around the lung that is left
    depth = int(round(15 / spacing[1]))
    fluid = np.zeros_like(lungs)
    for z, x in zip(*np.nonzero(lungs.sum(axis=1) * spacing[1] > 30)):
        ys = np.flatnonzero(lungs[z, :, x])
        fluid[z, ys[-depth:], x] = True  # axis 1 runs posterior (LPS)
    left = lungs & ~fluid
    around = pleural_space(left, spacing, body=body)
    assert fluid.sum() > 500
    assert (fluid & around).sum() >= 0.99 * fluid.sum()


def _write_sat(folder, case_id, labels):
    seg = folder / f"seg_{case_id}"
    seg.mkdir(parents=True, exist_ok=True)
    for label, m in labels.items():
        nib.save(nib.Nifti1Image(m.astype(np.float32), np.eye(4)), str(seg / f"{label}.nii.gz"))


@pytest.fixture(scope="module")
def cip_sat(tmp_path_factory):
    """cip-ct64 ingested at SAT's 1 x 1 x 3 mm (its grid is SAT's), its SAT input, and SAT-format outputs: the
    real lung mask as two lobes, a heart-like blob and the sternum by threshold."""
    from reg2rg.ingest import ingest

    d = tmp_path_factory.mktemp("cip_sat")
    vol = d / "cip.nii.gz"
    ingest(CIP / "ct-64.nrrd", vol, spacing=(1.0, 1.0, 3.0))
    rec = sat.prepare_sat_input(vol, d / "in" / "cip.nii.gz", d / "in" / "cip.json", "cip")
    img = sitk.ReadImage(str(vol))
    lung_img = sitk.Resample(sitk.ReadImage(str(CIP / "wholeLung-64.nrrd")), img, sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    hu = sitk.GetArrayFromImage(img)
    lungs = sitk.GetArrayFromImage(lung_img) > 0
    z, y, x = np.indices(hu.shape)
    masks = {"right lung upper lobe": lungs & (z >= hu.shape[0] // 2), "right lung lower lobe": lungs & (z < hu.shape[0] // 2),
             "heart": (hu > 0) & (hu < 100) & (np.abs(x - hu.shape[2] // 2) < 40) & (np.abs(y - hu.shape[1] // 2) < 40),
             "sternum": hu > 300}
    out = {}
    for label, m in masks.items():
        one = sitk.GetImageFromArray(m.astype(np.uint8))
        one.CopyInformation(img)
        out[label] = sat.to_sat_grid(one, rec)
    _write_sat(d / "sat", "cip", out)
    return vol, d, rec, hu, masks


def test_default_prompts_do_not_ask_sat_for_pleura():
    p = sat.region_prompts(None)
    assert p["pleura"] == [] and "pleura" not in sat.all_prompts(p)
    assert sat.derived_regions(None) == ("pleura",)
    assert sat.derived_regions({"Pleura": ["pleural effusion"]}) == () == sat.derived_regions({"pleura": []})
    assert sat.derived_regions({"heart": ["heart"]}) == ("pleura",)


@needs_cip
def test_sat_import_derives_the_pleura_from_the_lung_lobes(cip_sat, tmp_path):
    from reg2rg.masks import read_region_masks

    vol, d, rec, hu, masks = cip_sat
    side = sat.import_sat_case(vol, d / "sat", d / "in" / "cip.json", sat.region_prompts(None), tmp_path / "m.nii.gz",
                               tmp_path / "w", derive=sat.derived_regions(None))
    got, _ = read_region_masks(tmp_path / "m.nii.gz")
    box = [e - s for s, e in zip(rec["crop"]["start"], rec["crop"]["end"])]
    inside = sitk.GetArrayFromImage(sat.restore_sat_mask(np.ones(box, np.uint8), rec)) > 0
    lungs = (masks["right lung upper lobe"] | masks["right lung lower lobe"]) & inside
    others = (masks["heart"] | masks["sternum"]) & inside
    assert np.array_equal(got[REGIONS.index("lung")], lungs)
    want = pleural_space(lungs, (3.0, 1.0, 1.0), 20.0, body=body_mask(hu), exclude=others)
    pleura = got[REGIONS.index("pleura")]
    assert pleura.sum() > 100_000 and np.array_equal(pleura, want)  # voxel for voxel
    assert not (pleura & (got[REGIONS.index("heart")] | got[REGIONS.index("bone")])).any()
    info = side["segmentation"]["regions"]["pleura"]
    assert info["prompts"] == [] and info["derived"]["from"] == "lung" and info["derived"]["margin_mm"] == 20.0
    assert info["derived"]["voxels"] == int(want.sum()) and side["status"]["pleura"] == "present"
    assert "heart" in info["derived"]["excluded"] and "lung" not in info["derived"]["excluded"]


@needs_cip
def test_the_pleura_margin_is_the_configured_one(cip_sat, tmp_path):
    """segmentation.pleura_margin_mm reaches the shell and the sidecar (rule sat_import_shard passes it)."""
    from reg2rg.masks import read_region_masks

    vol, d, rec, hu, masks = cip_sat
    sides, shells = {}, {}
    for margin in (None, 10.0):
        out = tmp_path / f"m{margin}.nii.gz"
        sides[margin] = sat.import_sat_case(vol, d / "sat", d / "in" / "cip.json", sat.region_prompts(None), out,
                                            tmp_path / f"w{margin}", pleura_margin_mm=margin)
        shells[margin] = read_region_masks(out)[0][REGIONS.index("pleura")]
    assert sides[None]["segmentation"]["regions"]["pleura"]["derived"]["margin_mm"] == PLEURA_MARGIN_MM == 20.0
    assert sides[10.0]["segmentation"]["regions"]["pleura"]["derived"]["margin_mm"] == 10.0
    # the 10 mm shell lies inside the 20 mm one and is clearly thinner
    assert not (shells[10.0] & ~shells[None]).any() and 0 < shells[10.0].sum() < 0.7 * shells[None].sum()


@needs_cip
def test_a_users_pleura_prompt_or_empty_list_is_kept(cip_sat, tmp_path):
    from reg2rg.masks import read_region_masks

    vol, d, rec, hu, masks = cip_sat
    asked = sat.region_prompts({"pleura": ["pleural effusion"]})
    side = sat.import_sat_case(vol, d / "sat", d / "in" / "cip.json", asked, tmp_path / "a.nii.gz", tmp_path / "wa",
                               derive=sat.derived_regions({"pleura": ["pleural effusion"]}))
    assert side["status"]["pleura"] == "missing" and "derived" not in side["segmentation"]["regions"]["pleura"]
    assert "SAT wrote no file for its prompt(s) ['pleural effusion']" in side["notes"]["pleura"]
    side = sat.import_sat_case(vol, d / "sat", d / "in" / "cip.json", sat.region_prompts({"pleura": []}),
                               tmp_path / "b.nii.gz", tmp_path / "wb", derive=sat.derived_regions({"pleura": []}))
    assert side["status"]["pleura"] == "missing" and side["notes"]["pleura"] == "no SAT prompt for this region"
    with pytest.raises(ConfigError, match="both prompted"):
        sat.import_sat_case(vol, d / "sat", d / "in" / "cip.json", asked, tmp_path / "c.nii.gz", tmp_path / "wc",
                            derive=("pleura",))
    got, _ = read_region_masks(tmp_path / "b.nii.gz")
    assert not got[REGIONS.index("pleura")].any()
