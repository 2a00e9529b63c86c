"""The dataset (reg2rg.dataset): the region choice of Reg2RGDataset on a cache of real files, its items against
the direct transforms, the region shuffle, the visual collate (also in a DataLoader worker), padding to the
longest sequence, the axis permute to the model's input layout, and a CT-RATE v1 file through ingest, masks and
cache to the model input in both layouts."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from reg2rg.cache import cache_scan
from reg2rg.constants import REGIONS
from reg2rg.dataset import Reg2RGDataset, collate_visual, pad_to_longest, to_input_layout
from reg2rg.transforms import (
    body_box,
    global_input,
    region_geometry_input,
    region_lfd_off_input,
    region_texture_input,
    size_zyx,
)

from conftest import SHARED_DATA as DATA, needs_fixtures

TS = DATA / "totalseg-chest-crop"
needs_ts = needs_fixtures(TS)

MEDIASTINUM, BONE, THYROID, LUNG = (REGIONS.index(r) for r in ("mediastinum", "bone", "thyroid", "lung"))
SIZE = (40, 36, 20)  # (x, y, z): downsamples the 120 x 126 x 164 scan, upsamples small region crops


# --------------------------------------------------------------------------------------------------------------
# Padding and the axis permute
# --------------------------------------------------------------------------------------------------------------

def test_pad_to_longest_pads_to_the_batch_not_to_2048():
    ids, mask = pad_to_longest([[5, 6, 7], [8]], pad_value=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_to_longest([torch.tensor([1, 2]), torch.tensor([3])], pad_value=9, side="left")
    assert ids.tolist() == [[1, 2], [9, 3]] and mask.tolist() == [[1, 1], [0, 1]]


def test_to_input_layout_swaps_to_model_axes_and_ras_reverses_x_and_y():
    z, y, x = 3, 4, 5
    a = torch.zeros(2, 1, z, y, x)
    a[1, 0, 2, 0, 4] = 1  # data order: slice 2 (superior end), row 0 (anterior end), column 4 (left end)
    lps = to_input_layout(a, "lps")
    assert lps.shape == (2, 1, x, y, z) and lps[1, 0, 4, 0, 2] == 1
    assert torch.equal(lps, a.permute(0, 1, 4, 3, 2)) and lps.data_ptr() == a.data_ptr()  # a view, as before
    ras = to_input_layout(a, "ras")
    assert ras.shape == (2, 1, x, y, z) and ras[1, 0, 0, y - 1, 2] == 1  # right end, posterior end, superior
    assert torch.equal(ras, torch.flip(lps, dims=(2, 3)))
    n = a.numpy()
    assert np.array_equal(to_input_layout(n, "lps"), lps.numpy()) and np.shares_memory(to_input_layout(n, "lps"), n)
    assert np.array_equal(to_input_layout(n[1, 0], "ras"), ras[1, 0].numpy())
    for bad in ("RAS", "xyz", None):
        with pytest.raises(ValueError, match="lps, ras"):
            to_input_layout(a, bad)
    with pytest.raises(ValueError, match=r"\[\.\.\., Z, Y, X\]"):
        to_input_layout(torch.zeros(4, 4), "lps")


# --------------------------------------------------------------------------------------------------------------
# Dataset and collate, on a cache of real files
# --------------------------------------------------------------------------------------------------------------

def _manifest_row(case, volume, mask, texts, usable, status="included", reason="", split="train"):
    return {
        "case_id": case, "split": split, "source_split": split, "status": status, "reason": reason,
        "image": str(volume), "volume": str(volume), "mask": str(mask), "size": [120, 126, 164],
        "spacing": [1.5, 1.5, 1.5], "origin": [0.0, 0.0, 0.0], "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
        "intensity_mode": "hu",
        "region_status": ["present" if r in usable else "missing" for r in REGIONS],
        "region_texts": texts, "regions_usable": [r for r in usable if texts[REGIONS.index(r)]],
        "report": "whole report", "labels": None,
    }


def _two_regions(cached, texts) -> pd.DataFrame:
    """A manifest of the cached scan with mediastinum and bone usable."""
    return pd.DataFrame([_manifest_row("ts", TS / "ct_cropped.nii.gz", cached["mask"], texts, ["mediastinum", "bone"])])


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """ct_cropped with aorta (as mediastinum), vertebrae_T12 (bone) and an all-air thyroid; cached at SIZE."""
    tmp = tmp_path_factory.mktemp("data")
    img = sitk.ReadImage(str(TS / "ct_cropped.nii.gz"))
    ct = sitk.GetArrayFromImage(img)
    aorta = sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "aorta.nii.gz"))) > 0
    t12 = sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "vertebrae_T12.nii.gz"))) > 0
    air = ct <= -1000
    thyroid = np.zeros_like(air)
    idx = np.argwhere(air)[:50]  # a few air voxels: a mask present in the file but with nothing > -1000 HU
    thyroid[tuple(idx.T)] = True
    label = (aorta.astype(np.uint16) << MEDIASTINUM) | (t12.astype(np.uint16) << BONE) | (
        thyroid.astype(np.uint16) << THYROID)
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(img)
    mask_path = tmp / "ts.nii.gz"
    sitk.WriteImage(lab, str(mask_path), useCompression=True)
    cache_dir = tmp / "cache"
    cache_scan(TS / "ct_cropped.nii.gz", mask_path, cache_dir / "ts.safetensors", input_size=SIZE)
    return {"dir": cache_dir, "ct": ct, "aorta": aorta, "t12": t12, "mask": mask_path}


@needs_ts
def test_dataset_leaves_out_regions_without_text_or_with_empty_mask(cached):
    texts = [None] * len(REGIONS)
    texts[MEDIASTINUM] = "Aortic arch calcification."
    texts[THYROID] = "Thyroid normal."  # a text, but the mask has no voxel above -1000 HU
    manifest = pd.DataFrame([
        _manifest_row("ts", TS / "ct_cropped.nii.gz", cached["mask"], texts, ["mediastinum", "bone", "thyroid"]),
        _manifest_row("gone", TS / "ct_cropped.nii.gz", cached["mask"], [None] * 10, [], status="excluded",
                      reason="no region has both a non-empty mask and a text"),
    ])
    train = Reg2RGDataset(manifest, cached["dir"], SIZE, split="train", text=True)
    assert len(train) == 1 and train.skipped == []
    item = train[0]
    assert item["case_id"] == "ts"
    assert item["regions"] == [MEDIASTINUM]  # bone has no text, thyroid no voxel inside the body
    assert item["region_texts"] == ["Aortic arch calcification."]
    assert item["report"] == "whole report"
    z, y, x = size_zyx(SIZE)
    assert item["global"].shape == (1, z, y, x) and item["global"].dtype == torch.float32
    assert item["texture"].shape == item["geometry"].shape == (1, 1, z, y, x)

    test = Reg2RGDataset(manifest, cached["dir"], SIZE, text=False)
    threads = torch.get_num_threads()
    item = test[0]
    assert torch.get_num_threads() == threads  # the loader's single thread is restored
    assert item["regions"] == [BONE, MEDIASTINUM]  # every region with a mask inside the body, texts or not
    assert item["region_texts"] == [None, "Aortic arch calcification."]
    assert item["texture"].shape[0] == 2

    # a training scan whose only texts belong to unusable regions is left out, with a reason
    texts2 = [None] * len(REGIONS)
    texts2[THYROID] = "Thyroid normal."
    lonely = Reg2RGDataset(pd.DataFrame([_manifest_row("ts", TS / "ct_cropped.nii.gz", cached["mask"], texts2,
                                                       ["thyroid"])]), cached["dir"], SIZE)
    assert len(lonely) == 0 and lonely.skipped[0][0] == "ts"


@needs_ts
def test_dataset_items_equal_the_direct_transform(cached):
    manifest = _two_regions(cached, ["t"] * len(REGIONS))
    item = Reg2RGDataset(manifest, cached["dir"], SIZE, text=False)[0]
    ct = cached["ct"]
    body = body_box(ct)
    assert torch.allclose(item["global"], global_input(ct, SIZE), atol=1e-5)
    for k, m in ((0, cached["t12"]), (1, cached["aorta"])):
        assert torch.allclose(item["texture"][k], region_texture_input(ct, m, None, SIZE), atol=1e-5)
        assert torch.allclose(item["geometry"][k], region_geometry_input(m[body], SIZE), atol=1e-6)
    ablation = Reg2RGDataset(manifest, cached["dir"], SIZE, text=False, lfd=False)[0]
    assert torch.allclose(ablation["texture"][1], region_lfd_off_input(ct[body], cached["aorta"][body], SIZE), atol=1e-5)
    with pytest.raises(Exception, match="input size"):
        Reg2RGDataset(manifest, cached["dir"], (64, 64, 16))


@needs_ts
def test_shuffled_regions_keep_texts_and_tensors_together(cached):
    manifest = _two_regions(cached, [f"text {i}" for i in range(len(REGIONS))])
    plain = Reg2RGDataset(manifest, cached["dir"], SIZE)[0]
    ds = Reg2RGDataset(manifest, cached["dir"], SIZE, shuffle_regions=True)
    torch.manual_seed(0)
    orders = set()
    for _ in range(8):
        item = ds[0]
        orders.add(tuple(item["regions"]))
        for k, r in enumerate(item["regions"]):
            j = plain["regions"].index(r)
            assert item["region_texts"][k] == f"text {r}"
            assert torch.equal(item["texture"][k], plain["texture"][j])
            assert torch.equal(item["geometry"][k], plain["geometry"][j])
    assert len(orders) == 2


@needs_ts
def test_collate_handles_different_region_counts(cached):
    manifest = _two_regions(cached, ["t"] * len(REGIONS))
    two = Reg2RGDataset(manifest, cached["dir"], SIZE, text=False)[0]
    one = {**two, "case_id": "other", "regions": two["regions"][1:], "texture": two["texture"][1:],
           "geometry": two["geometry"][1:], "region_texts": two["region_texts"][1:], "report": None}
    batch = collate_visual([two, one], tokenize=lambda items: {"input_ids": torch.zeros(len(items), 3)})
    z, y, x = size_zyx(SIZE)
    assert batch["case_id"] == ["ts", "other"]
    assert batch["global"].shape == (2, 1, z, y, x)
    assert batch["texture"].shape == batch["geometry"].shape == (3, 1, z, y, x)
    assert batch["region_counts"].tolist() == [2, 1]
    assert batch["regions"].tolist() == [BONE, MEDIASTINUM, MEDIASTINUM]
    assert torch.equal(batch["texture"][2], two["texture"][1])
    assert batch["region_texts"] == [["t", "t"], ["t"]] and batch["report"] == ["whole report", None]
    assert batch["input_ids"].shape == (2, 3)
    xyz = collate_visual([two], layout="xyz")
    assert xyz["texture"].shape == (2, 1, x, y, z)
    assert torch.equal(xyz["texture"].permute(0, 1, 4, 3, 2), two["texture"])
    with pytest.raises(ValueError, match="clash"):
        collate_visual([two], tokenize=lambda items: {"texture": torch.zeros(1)})


@needs_ts
def test_collate_in_a_dataloader_worker_uses_shared_memory(cached):
    manifest = _two_regions(cached, ["t"] * len(REGIONS))
    ds = Reg2RGDataset(manifest, cached["dir"], SIZE, text=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_visual)
    batch = next(iter(loader))
    assert batch["texture"].is_shared()  # made in shared memory by the worker, not copied there
    direct = collate_visual([ds[0]])
    for key in ("global", "texture", "geometry"):
        assert torch.equal(batch[key], direct[key])
    assert batch["region_counts"].tolist() == [2]


# --------------------------------------------------------------------------------------------------------------
# Orientation: a CT-RATE v1 file through ingest, masks and cache to the model input
# --------------------------------------------------------------------------------------------------------------

def _ctrate_v1_item(tmp, prone: bool, size) -> dict:
    """One synthetic scan written as CT-RATE v1 writes its files, taken through ingest, the masks and cache
    stages to a Reg2RGDataset item. The file: raw stored values (HU + 1024) in a NIfTI with an identity affine
    (v1's blank header), nibabel array [i, j, k] = [column, row, slice]; its geometry only in the metadata row
    (1 x 1 x 3 mm, slices to superior). Body (0 HU) in air, a 500 HU block at the left-anterior-superior corner
    of the body; region `lung`: the body's left-anterior quadrant, its mask file on the metadata's grid.
    Head-first supine: columns run to the patient's left, rows to posterior (ImageOrientationPatient
    [1,0,0,0,1,0]); prone: both reversed ([-1,0,0,0,-1,0]), the same patient on the same physical grid."""
    import nibabel as nib

    from reg2rg.ingest import ingest, read_ct
    from reg2rg.masks import import_region_masks

    tmp.mkdir(parents=True)
    rng = np.random.default_rng(0)
    hu = rng.integers(-1040, -1000, (40, 32, 12)).astype(np.int16)  # air, noisy (ingest checks it)
    hu[4:36, 4:28, :] = rng.integers(-20, 21, (32, 24, 12))  # body
    hu[28:36, 4:10, 8:12] = 500  # marker: high i (left), low j (anterior), high k (superior)
    lung = np.zeros(hu.shape, dtype=np.uint8)
    lung[20:36, 4:16, :] = 1  # left-anterior quadrant of the body
    orientation, position = "[1, 0, 0, 0, 1, 0]", "[-20.0, -16.0, -100.0]"
    if prone:
        hu, lung = hu[::-1, ::-1].copy(), lung[::-1, ::-1].copy()
        orientation, position = "[-1, 0, 0, 0, -1, 0]", "[19.0, 15.0, -100.0]"
    src = tmp / "valid_1_a_1.nii.gz"
    nib.save(nib.Nifti1Image((hu.astype(np.int32) + 1024).astype(np.int16), np.eye(4)), str(src))
    meta = tmp / "validation_metadata.csv"
    meta.write_text("VolumeName,RescaleSlope,RescaleIntercept,XYSpacing,ZSpacing,ImageOrientationPatient,"
                    f"ImagePositionPatient\n{src.name},1.0,-1024.0,\"[1.0, 1.0]\",3.0,\"{orientation}\",\"{position}\"\n")
    volume = tmp / "volumes" / "valid_1_a_1.nii.gz"
    ingest(src, volume, spacing=(1.0, 1.0, 3.0), metadata_csv=meta)
    grid, _ = read_ct(src, metadata_csv=meta)  # the source grid, as the metadata gives it
    mask = sitk.GetImageFromArray(lung.transpose(2, 1, 0))
    mask.CopyInformation(grid)
    (tmp / "seg").mkdir()
    sitk.WriteImage(mask, str(tmp / "seg" / "lung.nii.gz"))
    label = tmp / "masks" / "valid_1_a_1.nii.gz"
    import_region_masks(volume, {"lung": tmp / "seg" / "lung.nii.gz"}, label)
    cache_scan(volume, label, tmp / "cache" / "valid_1_a_1.safetensors", input_size=size)
    texts = ["t" if r == "lung" else None for r in REGIONS]
    row = _manifest_row("valid_1_a_1", volume, label, texts, ["lung"])
    return Reg2RGDataset(pd.DataFrame([row]), tmp / "cache", size, text=False)[0]


def test_a_ctrate_v1_marker_reaches_the_model_where_input_layout_says(tmp_path):
    size = (16, 12, 4)  # (x, y, z): the body (32 x 24 x 12 voxels) halved in x and y, z in windows of 3 slices
    supine = _ctrate_v1_item(tmp_path / "supine", False, size)
    prone = _ctrate_v1_item(tmp_path / "prone", True, size)
    for key in ("global", "texture", "geometry"):  # ingest puts both storage orders in the same LPS voxel order
        assert torch.equal(supine[key], prone[key]), key
    assert supine["regions"] == [LUNG]
    batches = {layout: collate_visual([supine], layout="xyz", input_layout=layout) for layout in ("lps", "ras")}
    for key in ("global", "texture", "geometry"):
        assert torch.equal(batches["ras"][key], torch.flip(batches["lps"][key], dims=(2, 3)))
    x, y, z = size
    for layout, b in batches.items():
        g, t, m = b["global"][0, 0], b["texture"][0, 0], b["geometry"][0, 0]  # [X, Y, Z]
        assert g.shape == t.shape == m.shape == (x, y, z)

        def at(xs, ys, zs):  # [X, Y, Z] boolean box, xs/ys given in LPS index ranges
            box = torch.zeros(x, y, z, dtype=torch.bool)
            if layout == "ras":  # X runs to the patient's right, Y to anterior
                xs, ys = range(x - xs.stop, x - xs.start), range(y - ys.stop, y - ys.start)
            box[xs.start:xs.stop, ys.start:ys.stop, zs.start:zs.stop] = True
            return box

        # The marker (500 HU: 1.0 after the window) fills the left-anterior-superior output windows: in lps at
        # high X, low Y; in ras at low X, high Y; superior (high Z) in both.
        assert torch.equal(g > 0.999, at(range(12, 16), range(0, 3), range(3, 4))), layout
        # The region's mask (geometry input, the body frame) flips with the image and holds the marker.
        assert torch.equal(m > 0.5, at(range(8, 16), range(0, 6), range(0, 4))), layout
        assert bool(m[g > 0.999].min() == 1)
        # Its texture crop (the quadrant, 16 x 12 x 12 voxels) shows the marker at the same corner.
        assert torch.equal(t > 0.999, at(range(8, 16), range(0, 6), range(3, 4))), layout
    with pytest.raises(ValueError, match="needs layout='xyz'"):
        collate_visual([supine], input_layout="ras")


@pytest.mark.parametrize("header, layout", [
    ("identity", "ras"),      # nibabel's default (sform = the identity: RAS), as a blank CT-RATE v1 header
    ("no_codes", "lps"),      # sform and qform codes 0: ITK reads the identity direction (nibabel: LAS)
    ("lps", "lps"),           # axes to the left and posterior: what DICOM storage of a head-first supine scan gives
    ("ras", "ras"),           # a file reoriented to RAS+ (nib.as_closest_canonical, SAT)
    ("las", None),            # x to the left, y anterior: no input_layout gives its stored order
    ("permuted", None),       # in-plane axes swapped
])
def test_stored_input_layout_gives_the_encoder_the_files_stored_order(tmp_path, header, layout):
    """What the authors' encoder saw (nibabel's array of the file, as stored) equals our ingested volume through
    to_input_layout with the layout stored_input_layout names for the file."""
    import nibabel as nib

    from reg2rg.ingest import ingest, stored_input_layout

    rng = np.random.default_rng(1)
    stored = rng.integers(-1040, -1000, (20, 16, 6)).astype(np.int16)
    stored[4:16, 3:12] = rng.integers(-20, 21, (12, 9, 6))
    stored[12:16, 3:6, 4:] = 500  # asymmetric in every axis
    affines = {"identity": np.eye(4), "no_codes": np.eye(4), "lps": np.diag([-1.0, -1.0, 3.0, 1.0]),
               "ras": np.diag([1.0, 1.0, 3.0, 1.0]), "las": np.diag([-1.0, 1.0, 3.0, 1.0]),
               "permuted": np.array([[0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])}
    img = nib.Nifti1Image(stored, affines[header])
    if header == "no_codes":
        img.set_sform(None, code=0)
        img.set_qform(None, code=0)
    src = tmp_path / "valid_1_a_1.nii.gz"
    nib.save(img, str(src))
    assert stored_input_layout(src) == layout
    ingest(src, tmp_path / "out.nii.gz", spacing=sitk.ReadImage(str(src)).GetSpacing(), already_hu=True)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz")))  # [z, y, x], LPS
    matches = [lay for lay in ("lps", "ras") if np.array_equal(to_input_layout(ours, lay), stored)]
    assert matches == ([layout] if layout else [])


def test_stored_input_layout_of_an_unreadable_file_names_it(tmp_path):
    """A file whose header cannot be read is an InputError naming it, with ITK's words (no address)."""
    from reg2rg.errors import InputError
    from reg2rg.ingest import stored_input_layout

    bad = tmp_path / "valid_1_a_1.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\nxx")
    with pytest.raises(InputError, match="cannot read the image header: ReadImageInformation") as err:
        stored_input_layout(bad)
    assert str(bad) in str(err.value) and "0x" not in str(err.value)
