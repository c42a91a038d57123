"""Tests of the random resize-and-rotate transforms of the equivariant regularisation."""

import numpy as np
import pytest
import torch

from dramseg.losses import equivariance_loss
from dramseg.transforms import EquivariantTransform, sample_transform

# numpy axes of a [D, H, W] array in the rotation plane of each axis, as torch.rot90 uses them.
NUMPY_PLANES = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}


@pytest.mark.parametrize("axis", ["z", "y", "x"])
@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_rotation_matches_numpy(axis, quarter_turns):
    volume = torch.rand(1, 1, 4, 5, 6)
    transform = EquivariantTransform((1.0, 1.0, 1.0), quarter_turns, axis)
    expected = np.rot90(volume[0, 0].numpy(), quarter_turns, axes=NUMPY_PLANES[axis])
    np.testing.assert_array_equal(transform.apply(volume)[0, 0].numpy(), expected)


def test_rotation_about_z_warps_map_like_input():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 4, 6, 8)
    weights = torch.randn(3, 1, 1, 1, 1)

    def network(x):
        return torch.nn.functional.conv3d(x, weights)

    transform = EquivariantTransform((1.0, 1.0, 1.0), 1, "z")
    map_of_rotated = network(transform.apply(image))
    rotated_map = transform.apply(network(image))
    expected = np.rot90(network(image)[0].numpy(), 1, axes=(2, 3))
    np.testing.assert_allclose(map_of_rotated[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(rotated_map[0].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "function, mode",
    [
        (lambda x: x, "trilinear"),
        (lambda x: 2.0 * x + 1.0, "trilinear"),  # affine maps commute with linear interpolation
        (lambda x: torch.sigmoid(5.0 * x), "nearest"),  # any pointwise map commutes with nearest
    ],
)
def test_equivariant_function_gives_zero_loss(function, mode):
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, 1, 8, 12, 16, generator=generator)
    mask = torch.zeros(2, 1, 8, 12, 16)
    mask[:, :, 2:6, 3:9, 4:12] = 1
    transform = EquivariantTransform((0.8, 1.17, 1.2), 1, "y")
    loss = equivariance_loss(
        function(transform.apply(image, mode)),
        transform.apply(function(image), mode),
        transform.apply(mask, "nearest"),
    )
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_non_equivariant_function_gives_positive_loss():
    image = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(4))

    def shift(x):
        return torch.roll(x, 1, dims=4)

    transform = EquivariantTransform((1.0, 1.0, 1.0), 1, "z")
    mask = torch.ones(1, 1, 8, 8, 8)
    loss = equivariance_loss(shift(transform.apply(image)), transform.apply(shift(image)), mask)
    assert loss.item() > 0.05


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32])
def test_nearest_keeps_labels_binary(dtype):
    generator = torch.Generator().manual_seed(5)
    mask = (torch.rand(1, 1, 16, 16, 16, generator=generator) > 0.5).to(dtype)
    transform = EquivariantTransform((0.83, 1.17, 0.9), 3, "x")
    warped = transform.apply(mask, mode="nearest")
    assert warped.dtype == dtype
    assert set(torch.unique(warped.float()).tolist()) <= {0.0, 1.0}


def test_resize_changes_shape_then_rotation_swaps_axes():
    transform = EquivariantTransform((1.0, 1.5, 0.5), 1, "z")
    warped = transform.apply(torch.rand(1, 2, 8, 8, 8))
    # Resized to 8 x 12 x 4, then a quarter turn about z swaps y and x.
    assert warped.shape == (1, 2, 8, 4, 12)


@pytest.mark.parametrize(
    "scale, multiple, expected",
    [
        (0.9, 8, 32),  # 28.8 voxels
        (0.85, 8, 24),  # 27.2 voxels
        (1.2, 8, 40),  # 38.4 voxels
        (0.1, 8, 8),  # never below one multiple
        (0.9, 1, 29),
    ],
)
def test_resized_shape_rounds_to_multiple(scale, multiple, expected):
    transform = EquivariantTransform((scale, 1.0, 1.0), 0, "z", size_multiple=multiple)
    assert transform.resized_shape((32, 32, 32))[0] == expected


def test_constant_volume_stays_constant():
    transform = EquivariantTransform((0.8, 1.2, 1.1), 2, "x")
    warped = transform.apply(torch.full((1, 1, 10, 10, 10), 0.3))
    assert torch.allclose(warped, torch.full_like(warped, 0.3))


def test_sample_transform_reproducible():
    first = sample_transform(torch.Generator().manual_seed(7))
    second = sample_transform(torch.Generator().manual_seed(7))
    assert first == second


def test_sample_transform_ranges():
    generator = torch.Generator().manual_seed(8)
    transforms = [sample_transform(generator, (0.8, 1.2), (90, 180, 270)) for _ in range(200)]
    scales = [scale for transform in transforms for scale in transform.scale_zyx]
    assert min(scales) >= 0.8
    assert max(scales) <= 1.2
    assert {transform.quarter_turns for transform in transforms} == {1, 2, 3}
    assert {transform.axis for transform in transforms} == {"z", "y", "x"}


@pytest.mark.parametrize(
    "scale_range, rotations, message",
    [
        ((0.8, 1.2), (45,), "multiples of 90"),
        ((0.8, 1.2), (), "multiples of 90"),
        ((1.2, 0.8), (90,), "0 < low <= high"),
        ((0.0, 1.0), (90,), "0 < low <= high"),
    ],
)
def test_sample_transform_invalid(scale_range, rotations, message):
    with pytest.raises(ValueError, match=message):
        sample_transform(torch.Generator(), scale_range, rotations)


def test_apply_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'trilinear' or 'nearest'"):
        EquivariantTransform((1.0, 1.0, 1.0), 1, "z").apply(torch.rand(1, 1, 2, 2, 2), mode="cubic")
