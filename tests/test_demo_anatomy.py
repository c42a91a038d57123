"""Tests of lung segmentation and approximate lobes on real chest CT (downsampled RICORD and TCGA scans)."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dramseg.anatomy import LOBE_LABELS
from dramseg.demo.build import read_ct, resample_to_spacing
from dramseg.demo.lungs import LEFT_LUNG, RIGHT_LUNG, segment_lungs
from dramseg.demo.partition import partition_lobes

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RICORD = DATA / "ricord-1a-419639-000082" / "dicom"
SPACING_XYZ_MM = (2.5, 2.5, 3.0)


@pytest.fixture(scope="module")
def ricord_ct():
    if not RICORD.is_dir():
        pytest.skip(f"real RICORD scan not found at {RICORD}")
    return resample_to_spacing(read_ct("dicom", RICORD), SPACING_XYZ_MM)


@pytest.fixture(scope="module")
def ricord_lungs(ricord_ct):
    return segment_lungs(ricord_ct)


def flipped_x(image: sitk.Image) -> sitk.Image:
    """Return the same physical image stored with the x axis reversed (direction -1 along x)."""
    array_zyx = sitk.GetArrayFromImage(image)[:, :, ::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    flipped.SetSpacing(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    direction[:, 0] *= -1
    flipped.SetDirection(direction.ravel().tolist())
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((image.GetSize()[0] - 1, 0, 0)))
    return flipped


def centroid_mm(mask_zyx: np.ndarray, image: sitk.Image) -> np.ndarray:
    z, y, x = ndimage.center_of_mass(mask_zyx)
    return np.array(image.TransformContinuousIndexToPhysicalPoint((x, y, z)))


def volume_ml(mask_zyx: np.ndarray, image: sitk.Image) -> float:
    return float(mask_zyx.sum()) * float(np.prod(image.GetSpacing())) / 1000.0


@pytest.mark.parametrize("label", [RIGHT_LUNG, LEFT_LUNG])
def test_lungs_plausible_volume(ricord_ct, ricord_lungs, label):
    assert 1000.0 < volume_ml(ricord_lungs == label, ricord_ct) < 4000.0


def test_lungs_on_correct_sides(ricord_ct, ricord_lungs):
    right = centroid_mm(ricord_lungs == RIGHT_LUNG, ricord_ct)
    left = centroid_mm(ricord_lungs == LEFT_LUNG, ricord_ct)
    # LPS: patient-left is larger x.
    assert left[0] - right[0] > 80.0


def test_lungs_exclude_trachea(ricord_ct, ricord_lungs):
    ct_zyx = sitk.GetArrayViewFromImage(ricord_ct)
    top = ricord_lungs.any(axis=(1, 2)).nonzero()[0].max()
    # Air near the midline above the lung apices (trachea) is not lung.
    midline = ct_zyx.shape[2] // 2
    band = slice(midline - 6, midline + 7)
    assert not ricord_lungs[top - 3 :, :, band].any()


def test_lungs_side_follows_direction(ricord_ct, ricord_lungs):
    flipped = flipped_x(ricord_ct)
    labels = segment_lungs(flipped)
    right = centroid_mm(labels == RIGHT_LUNG, flipped)
    expected = centroid_mm(ricord_lungs == RIGHT_LUNG, ricord_ct)
    assert np.allclose(right, expected, atol=5.0)


def test_lungs_reject_image_without_air():
    image = sitk.GetImageFromArray(np.full((10, 20, 20), 40.0, dtype=np.float32))
    with pytest.raises(ValueError, match="no air"):
        segment_lungs(image)


@pytest.fixture(scope="module")
def ricord_lobes(ricord_ct, ricord_lungs):
    lungs = sitk.GetImageFromArray(ricord_lungs)
    lungs.CopyInformation(ricord_ct)
    return partition_lobes(ricord_lungs, lungs)


@pytest.mark.parametrize("name", list(LOBE_LABELS))
def test_lobes_not_empty(ricord_ct, ricord_lobes, name):
    assert volume_ml(ricord_lobes == LOBE_LABELS[name], ricord_ct) > 100.0


def test_lobes_cover_lungs(ricord_lungs, ricord_lobes):
    np.testing.assert_array_equal(ricord_lobes > 0, ricord_lungs > 0)


@pytest.mark.parametrize(
    ("lobe", "other", "axis", "sign"),
    [
        ("lll", "lul", 2, -1),  # lower lobe inferior (z) to upper lobe
        ("lll", "lul", 1, +1),  # lower lobe posterior (y) to upper lobe
        ("rll", "rul", 2, -1),
        ("rll", "rul", 1, +1),
        ("rml", "rul", 2, -1),  # middle lobe inferior to upper lobe
        ("rml", "rll", 1, -1),  # middle lobe anterior to lower lobe
        ("lul", "rul", 0, +1),  # left lobes at larger x
        ("lll", "rll", 0, +1),
    ],
)
def test_lobes_positions(ricord_ct, ricord_lobes, lobe, other, axis, sign):
    first = centroid_mm(ricord_lobes == LOBE_LABELS[lobe], ricord_ct)
    second = centroid_mm(ricord_lobes == LOBE_LABELS[other], ricord_ct)
    assert sign * (first[axis] - second[axis]) > 5.0
