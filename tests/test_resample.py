"""Tests of the resample stage: lung crop, isotropic grid, physical positions and box.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dramseg import resample
from dramseg.errors import PipelineInputError

SPACING_XYZ_MM = (0.7, 0.7, 2.5)
ORIGIN_MM = (-60.0, -50.0, -120.0)
LPS_FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
RESAMPLE_SETTINGS = {"spacing_mm": 1.4, "interpolator": "linear", "lung_margin_mm": 10.0, "max_air_percentile_hu": -850.0, "rescale": None}


def scan_pair(direction=None, shape_zyx=(40, 120, 160)):
    """Return (float32 CT, uint8 lobe map) on one grid; lobes 1..5 fill boxes inside the lungs."""
    lobes_zyx = np.zeros(shape_zyx, dtype=np.uint8)
    lobes_zyx[10:20, 30:70, 90:130] = 1
    lobes_zyx[20:30, 30:70, 90:130] = 2
    lobes_zyx[10:20, 30:70, 30:70] = 3
    lobes_zyx[20:30, 50:70, 30:70] = 4
    lobes_zyx[20:30, 30:50, 30:70] = 5
    ct_zyx = np.full(shape_zyx, 30.0, dtype=np.float32)
    ct_zyx[lobes_zyx > 0] = -860.0
    ct_zyx[:, :10, :] = -1000.0
    images = []
    for array_zyx in (ct_zyx, lobes_zyx):
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing(SPACING_XYZ_MM)
        image.SetOrigin(ORIGIN_MM)
        if direction is not None:
            image.SetDirection(direction)
        images.append(image)
    return images[0], images[1]


def centroid_mm(lobes: sitk.Image, label: int) -> np.ndarray:
    indices_zyx = np.nonzero(sitk.GetArrayViewFromImage(lobes) == label)
    mean_index_xyz = [float(indices_zyx[axis].mean()) for axis in (2, 1, 0)]
    return np.array(lobes.TransformContinuousIndexToPhysicalPoint(mean_index_xyz))


@pytest.fixture(scope="module")
def resampled():
    ct, lobes = scan_pair()
    return ct, lobes, resample.resample_scan(ct, lobes, 1.4, "linear", 10.0)


def test_lung_box_adds_margin():
    _, lobes = scan_pair()
    start_xyz, size_xyz = resample.lung_box(sitk.GetArrayViewFromImage(lobes), SPACING_XYZ_MM, 10.0)
    # Lungs at x 30..129, y 30..69, z 10..29; margins of 15, 15 and 4 voxels.
    assert start_xyz == [15, 15, 6]
    assert size_xyz == [130, 70, 28]


def test_lung_box_clipped_to_image():
    _, lobes = scan_pair()
    start_xyz, size_xyz = resample.lung_box(sitk.GetArrayViewFromImage(lobes), SPACING_XYZ_MM, 100.0)
    assert start_xyz == [0, 0, 0]
    assert size_xyz == [160, 120, 40]


def test_lung_box_empty_rejected():
    with pytest.raises(ValueError, match="no lobe voxel"):
        resample.lung_box(np.zeros((4, 4, 4), dtype=np.uint8), (1.0, 1.0, 1.0), 5.0)


@pytest.mark.parametrize(
    "size_xyz, spacing_xyz_mm, expected_xyz",
    [
        ((100, 80, 40), (0.7, 0.7, 2.5), (50, 40, 72)),
        ((10, 10, 10), (1.4, 1.4, 1.4), (10, 10, 10)),
        ((7, 3, 1), (2.0, 0.5, 5.0), (10, 2, 4)),
    ],
)
def test_isotropic_grid_size(size_xyz, spacing_xyz_mm, expected_xyz):
    image = sitk.Image(size_xyz, sitk.sitkFloat32)
    image.SetSpacing(spacing_xyz_mm)
    assert resample.isotropic_grid(image, 1.4).GetSize() == expected_xyz


def test_isotropic_grid_same_lower_edge():
    image = sitk.Image((100, 80, 40), sitk.sitkFloat32)
    image.SetSpacing(SPACING_XYZ_MM)
    image.SetOrigin(ORIGIN_MM)
    image.SetDirection(LPS_FLIPPED)
    grid = resample.isotropic_grid(image, 1.4)
    lower_edge_mm = image.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    assert grid.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)) == pytest.approx(lower_edge_mm)


def test_resample_scan_size(resampled):
    _, _, (ct_resampled, lobes_resampled, box) = resampled
    # Crop 130 x 70 x 28 voxels = 91 x 49 x 70 mm.
    assert ct_resampled.GetSize() == (65, 35, 50)
    assert lobes_resampled.GetSize() == (65, 35, 50)


def test_resample_scan_pixel_types(resampled):
    _, _, (ct_resampled, lobes_resampled, _) = resampled
    assert ct_resampled.GetPixelID() == sitk.sitkFloat32
    assert lobes_resampled.GetPixelID() == sitk.sitkUInt8


def test_resample_scan_spacing(resampled):
    _, _, (ct_resampled, _, _) = resampled
    assert ct_resampled.GetSpacing() == pytest.approx((1.4, 1.4, 1.4))


@pytest.mark.parametrize("label", [1, 2, 3, 4, 5])
def test_resample_scan_keeps_centroid(resampled, label):
    _, lobes, (_, lobes_resampled, _) = resampled
    shift_mm = np.abs(centroid_mm(lobes_resampled, label) - centroid_mm(lobes, label))
    assert np.all(shift_mm <= 1.4)


def test_resample_scan_keeps_centroid_flipped_direction():
    ct, lobes = scan_pair(direction=LPS_FLIPPED)
    _, lobes_resampled, _ = resample.resample_scan(ct, lobes, 1.4, "linear", 10.0)
    shift_mm = np.abs(centroid_mm(lobes_resampled, 5) - centroid_mm(lobes, 5))
    assert np.all(shift_mm <= 1.4)


def test_resample_scan_keeps_direction():
    ct, lobes = scan_pair(direction=LPS_FLIPPED)
    ct_resampled, _, box = resample.resample_scan(ct, lobes, 1.4, "linear", 10.0)
    assert ct_resampled.GetDirection() == LPS_FLIPPED


def test_resample_scan_lung_values(resampled):
    _, _, (ct_resampled, lobes_resampled, _) = resampled
    lung_hu = sitk.GetArrayViewFromImage(ct_resampled)[sitk.GetArrayViewFromImage(lobes_resampled) == 4]
    assert np.median(lung_hu) == pytest.approx(-860.0)


def test_resample_scan_box(resampled):
    ct, _, (ct_resampled, _, box) = resampled
    assert box["start_index_xyz"] == [15, 15, 6]
    assert box["size_xyz"] == [130, 70, 28]
    assert box["origin_mm"] == pytest.approx(list(ct_resampled.GetOrigin()))
    assert box["original_size_xyz"] == [160, 120, 40]
    assert box["original_spacing_mm"] == pytest.approx(list(SPACING_XYZ_MM))


def test_resample_scan_bspline():
    ct, lobes = scan_pair()
    ct_resampled, _, _ = resample.resample_scan(ct, lobes, 1.4, "bspline", 10.0)
    assert ct_resampled.GetSize() == (65, 35, 50)


def test_unknown_interpolator_rejected():
    ct, lobes = scan_pair()
    with pytest.raises(ValueError, match="unknown interpolator 'cubic'"):
        resample.resample_scan(ct, lobes, 1.4, "cubic", 10.0)


def test_resample_to_reference_round_trip(resampled):
    _, lobes, (_, lobes_resampled, _) = resampled
    back = resample.resample_to_reference(lobes_resampled, lobes, "nearest")
    agreement = np.mean(sitk.GetArrayViewFromImage(back) == sitk.GetArrayViewFromImage(lobes))
    assert agreement > 0.99


def test_grid_differences_tolerance():
    _, lobes = scan_pair()
    nudged = sitk.Image(lobes)
    nudged.SetOrigin([value + 1e-3 for value in ORIGIN_MM])
    assert resample.grid_differences(nudged, lobes) == []


def test_grid_differences_spacing():
    _, lobes = scan_pair()
    other = sitk.Image(lobes)
    other.SetSpacing((0.7, 0.7, 2.0))
    assert resample.grid_differences(other, lobes) == ["spacing [0.7, 0.7, 2.0] vs [0.7, 0.7, 2.5] mm"]


def run_main(tmp_path, ct, lobes):
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(lobes, str(tmp_path / "lobes.nii.gz"))
    record = {"scan_id": "s1", "split": "test", "ct": str(tmp_path / "ct.nii.gz"), "lobes": None, "dicom_series": None}
    (tmp_path / "record.json").write_text(json.dumps(record))
    resample.main(
        [
            "--record", str(tmp_path / "record.json"),
            "--lobes", str(tmp_path / "lobes.nii.gz"),
            "--out-ct", str(tmp_path / "out" / "ct.nii.gz"),
            "--out-lobes", str(tmp_path / "out" / "lobes.nii.gz"),
            "--out-box", str(tmp_path / "out" / "box.json"),
            "--settings", json.dumps({"resample": RESAMPLE_SETTINGS}),
        ]
    )  # fmt: skip


def test_main_writes_outputs(tmp_path):
    ct, lobes = scan_pair()
    run_main(tmp_path, ct, lobes)
    box = json.loads((tmp_path / "out" / "box.json").read_text())
    written = sitk.ReadImage(str(tmp_path / "out" / "lobes.nii.gz"))
    assert box["resampled_size_xyz"] == list(written.GetSize())
    assert written.GetPixelID() == sitk.sitkUInt8
    assert sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz")).GetPixelID() == sitk.sitkFloat32


def test_main_lobes_off_grid_rejected(tmp_path):
    ct, lobes = scan_pair()
    lobes.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(PipelineInputError, match="not on the CT grid"):
        run_main(tmp_path, ct, lobes)
