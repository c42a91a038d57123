"""Tests of the fast Frangi vesselness against scikit-image and of its closed-form eigenvalues."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from skimage.filters import frangi

from dramseg import vessels

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
RICORD_DICOM = SHARED / "data" / "ricord-1a-419639-000082" / "dicom"
PAPER_SCALES_MM = (0.8, 1.0, 1.5, 2.0, 4.0)
ALPHA, BETA, GAMMA = 0.5, 0.5, 15.0


def dice(first: np.ndarray, second: np.ndarray) -> float:
    total = first.sum() + second.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(first, second).sum() / total


def tube_volume(size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright tubes (0 HU) of radius 1.2 to 3 voxels along z, y, x and a diagonal, in -850 HU plus noise.

    Returns (image, distance): the image (float32) and each voxel's distance to the nearest tube axis.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32)
    image = np.full((size,) * 3, -850.0, np.float32)
    distance = np.full((size,) * 3, np.inf, np.float32)
    centre = size / 2
    tubes = (
        ((y - centre + 8) ** 2 + (x - centre + 8) ** 2, 1.2),
        ((z - centre - 6) ** 2 + (x - centre - 4) ** 2, 2.0),
        ((z - centre + 9) ** 2 + (y - centre - 9) ** 2, 3.0),
        # A tube along the (1, 1, 0) diagonal of the z, y plane.
        (((z - y) / np.sqrt(2.0)) ** 2 + (x - centre - 10) ** 2, 1.5),
    )
    for distance_squared, radius in tubes:
        image[distance_squared <= radius**2] = 0.0
        distance = np.minimum(distance, np.sqrt(distance_squared))
    image += rng.normal(0.0, 25.0, image.shape).astype(np.float32)
    return image, distance


def ricord_crop() -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 48 x 48 x 48 voxel lung region of the RICORD scan on its own grid (0.70 x 0.70 x 1.25 mm)."""
    if not RICORD_DICOM.is_dir():
        pytest.skip(f"the RICORD DICOM series is not at {RICORD_DICOM}")
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(RICORD_DICOM))
    reader.SetFileNames(files[112:160])
    image = reader.Execute()
    ct_zyx = np.maximum(sitk.GetArrayFromImage(image).astype(np.float32), -1024.0)
    return np.ascontiguousarray(ct_zyx[:, 200:248, 110:158]), image.GetSpacing()


def skimage_vesselness(image_zyx, spacing_xyz_mm, scales_mm, pad_zyx=(0, 0, 0)) -> np.ndarray:
    """skimage.filters.frangi on the image mirrored by `pad_zyx` voxels at each border, cropped back."""
    sigmas = [tuple(scale / spacing for spacing in reversed(spacing_xyz_mm)) for scale in scales_mm]
    padded = np.pad(image_zyx, [(pad, pad) for pad in pad_zyx], mode="symmetric")
    response = frangi(padded, sigmas=sigmas, alpha=ALPHA, beta=BETA, gamma=GAMMA, black_ridges=False)
    return response[tuple(slice(pad, pad + size) for pad, size in zip(pad_zyx, image_zyx.shape))]


def kernel_radius_zyx(spacing_xyz_mm, scales_mm) -> tuple[int, ...]:
    """Return the maximum kernel radius of the fast filter along z, y and x, in voxels."""
    return tuple(
        max(len(vessels.gaussian_kernels(scale / spacing)[0]) // 2 for scale in scales_mm)
        for spacing in reversed(spacing_xyz_mm)
    )


EIGEN_CASES = {
    "random": lambda rng: rng.normal(size=(2000, 3, 3)),
    "large values": lambda rng: 1e4 * rng.normal(size=(2000, 3, 3)),
    "repeated eigenvalue": lambda rng: np.stack([np.diag([2.0, 2.0, -1.0])] * 5 + [np.diag([0.0, 3.0, 3.0])] * 5),
    "multiple of identity": lambda rng: np.stack([np.eye(3) * value for value in (-2.0, 0.0, 5.0)]),
    "rank one": lambda rng: np.einsum("ni,nj->nij", *(2 * [rng.normal(size=(500, 3))])),
    "shifted identity": lambda rng: 1e3 * np.eye(3) + rng.normal(size=(2000, 3, 3)),
}


@pytest.mark.parametrize("case", EIGEN_CASES)
def test_eigenvalues_match_eigvalsh(case):
    rng = np.random.default_rng(1)
    matrices = EIGEN_CASES[case](rng)
    matrices = ((matrices + np.swapaxes(matrices, 1, 2)) / 2).astype(np.float32)
    expected = np.linalg.eigvalsh(matrices.astype(np.float64))[:, ::-1].T
    found = vessels.symmetric_eigenvalues(
        matrices[:, 0, 0], matrices[:, 1, 1], matrices[:, 2, 2], matrices[:, 0, 1], matrices[:, 0, 2], matrices[:, 1, 2]
    )
    norm = np.linalg.norm(matrices.astype(np.float64), axis=(1, 2))
    assert found.dtype == np.float32
    assert np.all(np.abs(found - expected) <= 1e-4 * norm + 1e-30)


@pytest.mark.parametrize("sigma", [1.07, 1.5, 2.86, 4.0])
def test_kernels_have_unit_moments(sigma):
    smoothing, first, second = vessels.gaussian_kernels(sigma)
    offsets = np.arange(len(smoothing)) - len(smoothing) // 2
    # Convolution with these kernels returns the value of a constant, the slope of
    # f(t) = t and the curvature of f(t) = t**2 / 2, so there is no sigma**2 factor.
    # Below 1 voxel the sampled kernels underestimate derivatives, in scikit-image too.
    # The dropped kernel tails cost up to 0.3 % of the second moment.
    assert np.isclose(smoothing.sum(), 1.0, atol=3e-3)
    assert np.isclose(-(first * offsets).sum(), 1.0, atol=3e-3)
    assert np.isclose((second * offsets**2 / 2).sum(), 1.0, atol=3e-3)


AGREEMENT_CASES = [
    ("tubes", PAPER_SCALES_MM),
    ("tubes", (1.0,)),
    ("tubes", (1.4, 2.8)),
    ("ricord", PAPER_SCALES_MM),
    ("ricord", (0.8, 1.5)),
    ("ricord", (2.0,)),
]


@pytest.mark.parametrize(("volume", "scales_mm"), AGREEMENT_CASES)
def test_vesselness_agrees_with_skimage(volume, scales_mm):
    if volume == "tubes":
        image_zyx, spacing_xyz_mm = tube_volume()[0], (1.4, 1.4, 1.4)
    else:
        image_zyx, spacing_xyz_mm = ricord_crop()
    found = vessels.vesselness(image_zyx, spacing_xyz_mm, scales_mm, ALPHA, BETA, GAMMA, threads=2)
    # The fast filter mirrors the image once at its borders, while scikit-image mirrors each
    # of its two first-derivative passes. Given a mirrored margin, scikit-image receives the same
    # data; without it the two differ within a kernel radius of the border (reported only).
    pad_zyx = tuple(radius + 2 for radius in kernel_radius_zyx(spacing_xyz_mm, scales_mm))
    expected = skimage_vesselness(image_zyx, spacing_xyz_mm, scales_mm, pad_zyx)
    unpadded = skimage_vesselness(image_zyx, spacing_xyz_mm, scales_mm)
    correlation = np.corrcoef(expected.ravel(), found.ravel())[0, 1]
    print(f"{volume} {scales_mm}: correlation {correlation:.5f}, Dice at 0.05 / 0.5: "
          f"{dice(expected > 0.05, found > 0.05):.4f} / {dice(expected > 0.5, found > 0.5):.4f}; "
          f"without the mirrored margin: correlation {np.corrcoef(unpadded.ravel(), found.ravel())[0, 1]:.4f}, "
          f"Dice at 0.5 {dice(unpadded > 0.5, found > 0.5):.4f}")
    assert found.dtype == np.float32
    assert correlation >= 0.995
    assert dice(expected > 0.05, found > 0.05) >= 0.95
    assert dice(expected > 0.5, found > 0.5) >= 0.95


def test_vesselness_marks_tubes():
    image_zyx, distance = tube_volume()
    found = vessels.vesselness(image_zyx, (1.4, 1.4, 1.4), PAPER_SCALES_MM, ALPHA, BETA, GAMMA)
    far = found[distance > 8]
    # Noise of 25 HU looks tube-like at sub-voxel scales now and then, so a few far voxels respond.
    assert np.percentile(found[distance < 0.5], 5) > 0.5
    assert np.median(far) < 0.01
    assert np.mean(far > 0.5) < 0.005


def test_threads_give_same_output():
    image_zyx = tube_volume(seed=3)[0]
    mask_zyx = np.zeros(image_zyx.shape, bool)
    mask_zyx[10:40, 5:30, 12:44] = True
    single = vessels.vesselness(image_zyx, (1.4, 1.4, 1.4), PAPER_SCALES_MM, ALPHA, BETA, GAMMA, mask_zyx, threads=1)
    double = vessels.vesselness(image_zyx, (1.4, 1.4, 1.4), PAPER_SCALES_MM, ALPHA, BETA, GAMMA, mask_zyx, threads=2)
    assert np.array_equal(single, double)


def test_mask_zeros_outside():
    image_zyx = tube_volume(size=40)[0]
    mask_zyx = np.zeros(image_zyx.shape, bool)
    # A block around the axis of the tube along z, which lies at y = x = 12.
    mask_zyx[18:22, 10:15, 10:15] = True
    found = vessels.vesselness(image_zyx, (1.4, 1.4, 1.4), (1.4,), ALPHA, BETA, GAMMA, mask_zyx)
    everywhere = vessels.vesselness(image_zyx, (1.4, 1.4, 1.4), (1.4,), ALPHA, BETA, GAMMA)
    assert not np.any(found[~mask_zyx])
    assert np.all(found[18:22, 12, 12] > 0.5)
    # The margin of 3 sigma leaves only the kernel tails outside the filtered box.
    assert np.allclose(found[mask_zyx], everywhere[mask_zyx], atol=1e-4)


def test_empty_mask_gives_zeros():
    image_zyx = tube_volume(size=24)[0]
    found = vessels.vesselness(image_zyx, (1.4,) * 3, (1.0,), ALPHA, BETA, GAMMA, np.zeros(image_zyx.shape, bool))
    assert not np.any(found)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"spacing_xyz_mm": (1.0, 1.0)}, "spacing"),
        ({"spacing_xyz_mm": (1.0, 0.0, 1.0)}, "spacing"),
        ({"scales_mm": ()}, "scales"),
        ({"scales_mm": (1.0, -2.0)}, "scales"),
        ({"threads": 0}, "threads"),
        ({"mask_zyx": np.ones((4, 4, 4), bool)}, "mask shape"),
    ],
)
def test_vesselness_rejects_invalid_input(arguments, message):
    call = {"spacing_xyz_mm": (1.0, 1.0, 1.0), "scales_mm": (1.0,), "threads": 1, "mask_zyx": None}
    call.update(arguments)
    with pytest.raises(ValueError, match=message):
        vessels.vesselness(np.zeros((8, 8, 8), np.float32), alpha=ALPHA, beta=BETA, gamma=GAMMA, **call)
