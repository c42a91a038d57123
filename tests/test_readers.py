"""Tests of dramseg.readers on real files written to tmp_path and on the RICORD DICOM series."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dramseg.errors import PipelineInputError
from dramseg.readers import read_ct, read_image, read_label_map

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RICORD_DICOM = SHARED_DATA / "ricord-1a-419639-000082" / "dicom"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def chest_like_zyx(shape_zyx=(8, 24, 24), rng_seed=0) -> np.ndarray:
    """Return int16 HU values: air (-1000) around a soft-tissue body with air-filled lungs."""
    rng = np.random.default_rng(rng_seed)
    ct_zyx = np.full(shape_zyx, -1000, dtype=np.int16)
    ct_zyx[:, 3:-3, 3:-3] = 40
    ct_zyx[:, 6:-6, 5:11] = -850
    ct_zyx[:, 6:-6, 13:19] = -850
    return (ct_zyx + rng.integers(-20, 20, size=shape_zyx)).astype(np.int16)


def write_image(array_zyx: np.ndarray, path: Path, spacing_xyz=(0.8, 0.8, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_slice(
    path: Path,
    stored_yx: np.ndarray,
    position_mm,
    series_uid: str,
    description: str = "chest",
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    frames: int | None = None,
    slice_spacing_mm: float | None = None,
) -> None:
    """Write one CT DICOM file (stored values + intercept -1024 = HU), or a multi-frame file with `frames`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta

    dataset.SOPClassUID = CT_IMAGE_STORAGE
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    dataset.SeriesInstanceUID = series_uid
    dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    dataset.PatientID = "test"
    dataset.Modality = "CT"
    dataset.SeriesDescription = description

    dataset.ImagePositionPatient = [float(value) for value in position_mm]
    dataset.ImageOrientationPatient = list(orientation)
    dataset.PixelSpacing = [0.8, 0.8]
    dataset.SliceThickness = 2.0
    if slice_spacing_mm is not None:
        dataset.SpacingBetweenSlices = slice_spacing_mm

    dataset.Rows, dataset.Columns = stored_yx.shape[-2:]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleIntercept = -1024
    dataset.RescaleSlope = 1
    if frames is not None:
        dataset.NumberOfFrames = frames
    dataset.PixelData = stored_yx.astype(np.int16).tobytes()
    dataset.save_as(path, enforce_file_format=True)


def write_dicom_series(folder: Path, positions_z_mm, description="chest", series_uid=None, shift_x_per_slice_mm=0.0) -> str:
    """Write one axial series with slices at the given z positions; return its SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    ct_zyx = chest_like_zyx((len(positions_z_mm), 24, 24))
    for index, z_mm in enumerate(positions_z_mm):
        position_mm = (-10.0 + index * shift_x_per_slice_mm, -10.0, z_mm)
        write_dicom_slice(folder / f"{series_uid[-6:]}-{index:03d}.dcm", ct_zyx[index] + 1024, position_mm, series_uid, description)
    return series_uid


# Image files.


def test_read_image_nifti(tmp_path):
    path = write_image(chest_like_zyx(), tmp_path / "ct.nii.gz")
    assert read_image(path, "s1").GetSize() == (24, 24, 8)


@pytest.mark.parametrize("name", ["missing.nii.gz", "missing-folder"])
def test_read_image_missing_path(tmp_path, name):
    with pytest.raises(PipelineInputError, match="does not exist"):
        read_image(tmp_path / name, "s1")


def test_read_image_zero_bytes(tmp_path):
    path = tmp_path / "ct.nii.gz"
    path.touch()
    with pytest.raises(PipelineInputError, match=r"empty \(0 bytes\)"):
        read_image(path, "s1")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_read_image_truncated_nifti(tmp_path, suffix):
    path = write_image(chest_like_zyx(), tmp_path / f"ct{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineInputError, match="truncated"):
        read_image(path, "s1")


def test_read_image_corrupt_gzip(tmp_path):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(b"not an image header" * 40)[:-8] + b"garbage!")
    with pytest.raises(PipelineInputError, match="s1"):
        read_image(path, "s1")


def test_read_image_random_bytes(tmp_path):
    path = tmp_path / "ct.mha"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(PipelineInputError, match="reading the image failed"):
        read_image(path, "s1")


def test_read_image_folder_without_dicom(tmp_path):
    folder = tmp_path / "scan"
    folder.mkdir()
    write_image(chest_like_zyx(), folder / "ct.nii.gz")
    with pytest.raises(PipelineInputError, match="contains no DICOM series"):
        read_image(folder, "s1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_read_image_unreadable(tmp_path):
    path = write_image(chest_like_zyx(), tmp_path / "ct.nii.gz")
    path.chmod(0)
    with pytest.raises(PipelineInputError, match="permission denied"):
        read_image(path, "s1")


# CT checks.


def test_read_ct_float32_hu(tmp_path):
    path = write_image(chest_like_zyx(), tmp_path / "ct.nii.gz")
    ct = read_ct(path, "s1")
    assert ct.GetPixelID() == sitk.sitkFloat32


def test_read_ct_clips_padding(tmp_path):
    ct_zyx = chest_like_zyx()
    ct_zyx[:, :2, :] = -3024
    ct = read_ct(write_image(ct_zyx, tmp_path / "ct.nii.gz"), "s1")
    assert sitk.GetArrayViewFromImage(ct).min() == -1024.0


def test_read_ct_keeps_geometry(tmp_path):
    path = write_image(chest_like_zyx(), tmp_path / "ct.nii.gz", spacing_xyz=(0.7, 0.6, 2.5))
    assert read_ct(path, "s1").GetSpacing() == pytest.approx((0.7, 0.6, 2.5))


def test_read_ct_unscaled_rejected(tmp_path):
    path = write_image(chest_like_zyx() + 1024, tmp_path / "ct.nii.gz")
    with pytest.raises(PipelineInputError, match=r"look unscaled.*resample.rescale"):
        read_ct(path, "s1")


def test_read_ct_unscaled_accepted_with_rescale(tmp_path):
    stored_zyx = chest_like_zyx() + 1024
    path = write_image(stored_zyx, tmp_path / "ct.nii.gz")
    ct = read_ct(path, "s1", rescale={"slope": 1, "intercept": -1024})
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(ct), np.maximum(stored_zyx - 1024.0, -1024.0))


def test_read_ct_wrong_rescale_rejected(tmp_path):
    path = write_image(chest_like_zyx() + 3000, tmp_path / "ct.nii.gz")
    with pytest.raises(PipelineInputError, match="was applied already"):
        read_ct(path, "s1", rescale={"slope": 1, "intercept": -1024})


def test_read_ct_nan_rejected(tmp_path):
    ct_zyx = chest_like_zyx().astype(np.float32)
    ct_zyx[2, 5, 5] = np.nan
    with pytest.raises(PipelineInputError, match="1 NaN or infinite"):
        read_ct(write_image(ct_zyx, tmp_path / "ct.nii.gz"), "s1")


def test_read_ct_constant_rejected(tmp_path):
    path = write_image(np.full((8, 16, 16), -1000, dtype=np.int16), tmp_path / "ct.nii.gz")
    with pytest.raises(PipelineInputError, match="same value"):
        read_ct(path, "s1")


def test_read_ct_one_slice_rejected(tmp_path):
    path = write_image(chest_like_zyx((1, 24, 24)), tmp_path / "ct.nii.gz")
    with pytest.raises(PipelineInputError, match="at least 3 are needed"):
        read_ct(path, "s1")


def test_read_ct_two_dimensional_rejected(tmp_path):
    path = write_image(chest_like_zyx((1, 24, 24))[0], tmp_path / "ct.nii.gz", spacing_xyz=(0.8, 0.8))
    with pytest.raises(PipelineInputError, match="expected 3"):
        read_ct(path, "s1")


# Label maps.


def test_read_label_map_integer_float(tmp_path):
    labels_zyx = np.zeros((6, 10, 10), dtype=np.float32)
    labels_zyx[2:4, 2:8, 2:8] = 3.0
    labels = read_label_map(write_image(labels_zyx, tmp_path / "lobes.nii.gz"), "s1")
    assert labels.GetPixelID() == sitk.sitkInt32


def test_read_label_map_integer_float_values(tmp_path):
    labels_zyx = np.zeros((6, 10, 10), dtype=np.float32)
    labels_zyx[2:4, 2:8, 2:8] = 3.0
    labels = read_label_map(write_image(labels_zyx, tmp_path / "lobes.nii.gz"), "s1")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labels), labels_zyx.astype(np.int32))


def test_read_label_map_fractional_rejected(tmp_path):
    labels_zyx = np.zeros((6, 10, 10), dtype=np.float32)
    labels_zyx[2:4, 2:8, 2:8] = 2.5
    with pytest.raises(PipelineInputError, match="non-integer values"):
        read_label_map(write_image(labels_zyx, tmp_path / "lobes.nii.gz"), "s1")


def test_read_label_map_negative_rejected(tmp_path):
    labels_zyx = np.zeros((6, 10, 10), dtype=np.int16)
    labels_zyx[0, 0, 0] = -1
    with pytest.raises(PipelineInputError, match="negative labels"):
        read_label_map(write_image(labels_zyx, tmp_path / "lobes.nii.gz"), "s1")


# DICOM.


def test_dicom_series_reads_hu(tmp_path):
    write_dicom_series(tmp_path / "dicom", [0.0, 2.0, 4.0, 6.0, 8.0])
    ct = read_ct(tmp_path / "dicom", "s1")
    assert ct.GetSize() == (24, 24, 5)


def test_dicom_series_slice_spacing(tmp_path):
    write_dicom_series(tmp_path / "dicom", [0.0, 2.0, 4.0, 6.0, 8.0])
    assert read_image(tmp_path / "dicom", "s1").GetSpacing()[2] == pytest.approx(2.0)


def test_dicom_series_ignores_other_files(tmp_path):
    folder = tmp_path / "dicom"
    write_dicom_series(folder, [0.0, 2.0, 4.0, 6.0])
    (folder / "README.txt").write_text("exported by the scanner\n")
    (folder / "DICOMDIR-notes.json").write_text("{}")
    assert read_image(folder, "s1").GetSize() == (24, 24, 4)


def test_dicom_several_series_listed(tmp_path):
    folder = tmp_path / "dicom"
    first = write_dicom_series(folder, [0.0, 2.0, 4.0], description="lung kernel")
    second = write_dicom_series(folder, [0.0, 2.0, 4.0, 6.0], description="soft tissue kernel")
    with pytest.raises(PipelineInputError) as raised:
        read_image(folder, "s1")
    message = str(raised.value)
    for expected in (first, second, "3 files", "4 files", "lung kernel", "cohort.dicom_series"):
        assert expected in message


def test_dicom_series_selected_by_uid(tmp_path):
    folder = tmp_path / "dicom"
    write_dicom_series(folder, [0.0, 2.0, 4.0])
    second = write_dicom_series(folder, [0.0, 2.0, 4.0, 6.0])
    assert read_image(folder, "s1", series_uid=second).GetSize() == (24, 24, 4)


def test_dicom_unknown_series_uid(tmp_path):
    write_dicom_series(tmp_path / "dicom", [0.0, 2.0, 4.0])
    with pytest.raises(PipelineInputError, match="not found"):
        read_image(tmp_path / "dicom", "s1", series_uid="1.2.3.999")


def test_dicom_missing_slice_detected(tmp_path):
    write_dicom_series(tmp_path / "dicom", [0.0, 2.0, 4.0, 8.0, 10.0, 12.0])
    with pytest.raises(PipelineInputError, match=r"a slice is missing.*4\.000 mm apart"):
        read_image(tmp_path / "dicom", "s1")


def test_dicom_uneven_spacing_detected(tmp_path):
    write_dicom_series(tmp_path / "dicom", [0.0, 2.0, 4.0, 5.0, 7.0, 9.0])
    with pytest.raises(PipelineInputError, match="slice spacing is uneven"):
        read_image(tmp_path / "dicom", "s1")


def test_dicom_gantry_tilt_detected(tmp_path):
    write_dicom_series(tmp_path / "dicom", [0.0, 2.0, 4.0, 6.0], shift_x_per_slice_mm=0.5)
    with pytest.raises(PipelineInputError, match="gantry tilt"):
        read_image(tmp_path / "dicom", "s1")


def test_dicom_multiframe_file(tmp_path):
    path = tmp_path / "multiframe.dcm"
    stored_zyx = chest_like_zyx((5, 24, 24)) + 1024
    write_dicom_slice(path, stored_zyx, (0.0, 0.0, 0.0), generate_uid(), frames=5, slice_spacing_mm=2.5)
    assert read_ct(path, "s1").GetSize() == (24, 24, 5)


def test_dicom_multiframe_file_in_folder(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    stored_zyx = chest_like_zyx((5, 24, 24)) + 1024
    write_dicom_slice(folder / "image", stored_zyx, (0.0, 0.0, 0.0), generate_uid(), frames=5, slice_spacing_mm=2.5)
    assert read_ct(folder, "s1").GetSize() == (24, 24, 5)


def test_dicom_single_slice_file_rejected(tmp_path):
    write_dicom_series(tmp_path / "dicom", [0.0, 2.0, 4.0])
    one_file = sorted((tmp_path / "dicom").iterdir())[0]
    with pytest.raises(PipelineInputError, match="folder of the series"):
        read_ct(one_file, "s1")


def test_dicom_truncated_file(tmp_path):
    folder = tmp_path / "dicom"
    write_dicom_series(folder, [0.0, 2.0, 4.0])
    path = sorted(folder.iterdir())[0]
    data = path.read_bytes()
    single = tmp_path / "single.dcm"
    single.write_bytes(data[: len(data) - 600])
    with pytest.raises(PipelineInputError, match="single.dcm"):
        read_ct(single, "s1")


@pytest.mark.skipif(not RICORD_DICOM.is_dir(), reason=f"RICORD DICOM series not found at {RICORD_DICOM}")
def test_ricord_series_reads_as_hu():
    ct = read_ct(RICORD_DICOM, "ricord")
    ct_zyx = sitk.GetArrayViewFromImage(ct)
    assert ct.GetSize() == (512, 512, 255)
    assert ct_zyx.min() == -1024.0
    assert np.percentile(ct_zyx, 1) <= -850.0
    assert ct.GetSpacing() == pytest.approx((0.703125, 0.703125, 1.25))
