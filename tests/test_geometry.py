"""reg2rg.geometry on real files: the grid record, the grid comparison, resampling onto a reference grid in
physical space, and the ITK error text."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from reg2rg.geometry import grid_record, itk_message, resample_to_reference, same_grid

from conftest import SHARED_DATA as DATA, needs_fixtures
TS = DATA / "totalseg-chest-crop"

pytestmark = needs_fixtures(TS)


def test_grid_record_of_an_image_and_of_its_header():
    ct = sitk.ReadImage(str(TS / "ct_cropped.nii.gz"))
    rec = grid_record(ct)
    assert list(rec) == ["size", "spacing", "origin", "direction"]
    assert rec["size"] == [120, 126, 164] and rec["spacing"] == [1.5, 1.5, 1.5]
    assert rec["origin"] == [float(v) for v in ct.GetOrigin()] and rec["direction"] == list(np.eye(3).ravel())
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(TS / "aorta.nii.gz"))
    reader.ReadImageInformation()  # the header only: the mask shares the CT's grid
    assert grid_record(reader) == rec
    assert json.dumps(rec) == json.dumps(grid_record(sitk.ReadImage(str(TS / "aorta.nii.gz"))))


def test_grid_record_zero_signs_and_float32():
    class Header:  # what a header reader may give (SimpleITK itself stores -0.0 as 0.0)
        GetSize = staticmethod(lambda: (2, 3, 4))
        GetSpacing = staticmethod(lambda: (0.7, 0.7, 1.25))
        GetOrigin = staticmethod(lambda: (0.1, -0.2, 0.3))
        GetDirection = staticmethod(lambda: (1.0, -0.0, 0.0, 0.0, 1.0, 0.0, -0.0, 0.0, 1.0))

    assert "-0.0" not in json.dumps(grid_record(Header()))  # masks' and cache's records
    assert json.dumps(grid_record(Header(), negative_zero=True)["direction"]).count("-0.0") == 2  # ingest's
    assert grid_record(Header(), float32=True)["origin"] == [float(np.float32(v)) for v in (0.1, -0.2, 0.3)]
    assert grid_record(Header())["origin"] == [0.1, -0.2, 0.3] and grid_record(Header())["size"] == [2, 3, 4]


def test_same_grid_within_header_rounding_only():
    ct = grid_record(sitk.ReadImage(str(TS / "ct_cropped.nii.gz")))
    assert same_grid(ct, grid_record(sitk.ReadImage(str(TS / "vertebrae_T12.nii.gz"))))
    assert not same_grid(ct, grid_record(sitk.ReadImage(str(TS / "heart_on_larger_grid.nii.gz"))))
    # 1.5 mm spacing: spacing within 1e-4 relative, origin within 1e-3 of a voxel (0.0015 mm), direction 1e-4.
    assert same_grid(ct, {**ct, "spacing": [1.5 * (1 + 5e-5)] * 3})
    assert not same_grid(ct, {**ct, "spacing": [1.5 * (1 + 2e-4)] * 3})
    assert same_grid(ct, {**ct, "origin": [ct["origin"][0] + 0.001] + ct["origin"][1:]})
    assert not same_grid(ct, {**ct, "origin": [ct["origin"][0] + 0.002] + ct["origin"][1:]})
    assert not same_grid(ct, {**ct, "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0]})
    assert not same_grid(ct, {**ct, "size": [120, 126, 163]})


def test_resample_to_reference_places_a_mask_in_physical_space():
    ct = sitk.ReadImage(str(TS / "ct_cropped.nii.gz"))
    heart = sitk.ReadImage(str(TS / "heart_on_larger_grid.nii.gz"))
    assert heart.GetPixelID() == sitk.sitkUInt8
    on_ct = resample_to_reference(heart, ct)  # nearest neighbour by default
    assert on_ct.GetPixelID() == sitk.sitkUInt8 and grid_record(on_ct) == grid_record(ct)
    # The README: the larger grid's [72:192, 13:139, 0:164] (x, y, z) is the CT's grid.
    expected = sitk.GetArrayFromImage(heart)[0:164, 13:139, 72:192]
    assert expected.any() and np.array_equal(sitk.GetArrayFromImage(on_ct), expected)
    # A grid record as the reference gives the same voxels (no reference image needed).
    by_record = resample_to_reference(heart, grid_record(ct))
    assert np.array_equal(sitk.GetArrayFromImage(by_record), expected)
    # Back onto the larger grid: outside the CT's grid is 0 for nearest, -1024 for linear.
    back = sitk.GetArrayFromImage(resample_to_reference(on_ct, heart))
    assert back[:, :, :72].max() == 0 and np.array_equal(back[0:164, 13:139, 72:192], expected)
    ct_back = resample_to_reference(ct, heart, "linear")
    assert ct_back.GetPixelID() == sitk.sitkFloat32
    assert sitk.GetArrayFromImage(ct_back)[:, :, :72].max() == -1024


@pytest.mark.parametrize("name, problem", [("README.md", "Unable to determine ImageIO reader for"),
                                           ("no such file.nii.gz", "does not exist")])
def test_itk_message_drops_the_cxx_location(name, problem):
    with pytest.raises(RuntimeError) as err:
        sitk.ReadImage(str(TS / name))
    assert ".cxx" in str(err.value)
    ingest_text, short_text = itk_message(err.value), itk_message(err.value, short=True)
    for text in (ingest_text, short_text):
        assert problem in text and str(TS / name) in text
        assert ".cxx" not in text and "Exception thrown" not in text and "\n" not in text
    assert ingest_text == short_text  # one line: both forms are ITK's words without its prefix
    assert itk_message(RuntimeError("x" * 1000)) == "x" * 400
    assert itk_message(RuntimeError("x" * 1000), short=True) == "x" * 300
    assert itk_message(RuntimeError(""), short=True) == "RuntimeError"


def test_itk_message_of_a_reader_error_has_no_prefix_or_address(tmp_path):
    """SimpleITK 2.x writes "itk::ERROR: NrrdImageIO(0x55...): ..." (the address differs per run): both forms
    drop the prefix with it, so the same bad file gives the same message every time."""
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\nxx")
    with pytest.raises(RuntimeError) as err:
        sitk.ReadImage(str(bad))
    assert "itk::ERROR: NrrdImageIO(0x" in str(err.value)  # what this build raises
    ingest_text, short_text = itk_message(err.value), itk_message(err.value, short=True)
    for text in (ingest_text, short_text):
        assert text.startswith("ReadImageInformation: Error reading " + str(bad))
        assert "0x" not in text and "ERROR" not in text and ".cxx" not in text
    assert "; [nrrd] nrrdLoad: trouble reading" in ingest_text  # the reader's own lines follow
