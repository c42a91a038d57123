"""Tests of the neighbour attention module that refines the dRAM."""

import numpy as np
import pytest
import torch

from dramseg.models.attention import (
    NEIGHBOUR_OFFSETS_ZYX,
    AttentionRefinement,
    aggregate_neighbours,
    neighbour_validity,
    neighbour_weights,
)

SHAPE_ZYX = (5, 4, 3)


def test_offsets_are_face_and_edge_neighbours():
    nonzero_counts = sorted(sum(step != 0 for step in offset) for offset in NEIGHBOUR_OFFSETS_ZYX)
    assert nonzero_counts == [1] * 6 + [2] * 12


def test_weights_sum_to_one_everywhere():
    torch.manual_seed(0)
    query = torch.randn(2, 3, *SHAPE_ZYX)
    key = torch.randn(2, 3, *SHAPE_ZYX)
    weights = neighbour_weights(query, key)
    assert weights.shape == (2, 18, *SHAPE_ZYX)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2, *SHAPE_ZYX), atol=1e-6)


@pytest.mark.parametrize(
    "voxel_zyx, expected_count",
    [
        ((2, 1, 1), 18),  # interior
        ((0, 1, 1), 13),  # on a face of the volume
        ((0, 0, 1), 9),  # on an edge of the volume
        ((0, 0, 0), 6),  # corner
        ((4, 3, 2), 6),  # opposite corner
    ],
)
def test_border_voxels_lose_outside_neighbours(voxel_zyx, expected_count):
    valid = neighbour_validity(SHAPE_ZYX)
    assert int(valid[(0, slice(None), *voxel_zyx)].sum()) == expected_count


def test_outside_neighbours_get_zero_weight():
    torch.manual_seed(1)
    weights = neighbour_weights(torch.randn(1, 2, *SHAPE_ZYX), torch.randn(1, 2, *SHAPE_ZYX))
    valid = neighbour_validity(SHAPE_ZYX)
    assert torch.all(weights[~valid.expand_as(weights)] == 0)


def test_weights_match_equation():
    torch.manual_seed(2)
    query = torch.randn(1, 4, *SHAPE_ZYX)
    key = torch.randn(1, 4, *SHAPE_ZYX)
    weights = neighbour_weights(query, key)
    z, y, x = 2, 1, 1
    scores = []
    for dz, dy, dx in NEIGHBOUR_OFFSETS_ZYX:
        dot = float((query[0, :, z, y, x] * key[0, :, z + dz, y + dy, x + dx]).sum())
        scores.append(np.exp(max(dot, 0.0)))
    expected = np.array(scores) / np.sum(scores)
    np.testing.assert_allclose(weights[0, :, z, y, x].numpy(), expected, rtol=1e-5)


def neighbour_mean(values: np.ndarray, voxel_zyx) -> np.ndarray:
    """Mean of values [L, D, H, W] over the neighbours of a voxel that lie inside the volume."""
    z, y, x = voxel_zyx
    depth, height, width = values.shape[1:]
    found = []
    for dz, dy, dx in NEIGHBOUR_OFFSETS_ZYX:
        nz, ny, nx = z + dz, y + dy, x + dx
        if 0 <= nz < depth and 0 <= ny < height and 0 <= nx < width:
            found.append(values[:, nz, ny, nx])
    return np.mean(found, axis=0)


@pytest.mark.parametrize("voxel_zyx", [(2, 1, 1), (0, 1, 1), (0, 0, 1), (0, 0, 0), (4, 3, 2)])
def test_equal_features_average_neighbours(voxel_zyx):
    torch.manual_seed(3)
    constant = torch.ones(1, 3, *SHAPE_ZYX)
    weights = neighbour_weights(constant, constant)
    values = torch.randn(1, 2, *SHAPE_ZYX)
    aggregated = aggregate_neighbours(values, weights)
    expected = neighbour_mean(values[0].numpy(), voxel_zyx)
    np.testing.assert_allclose(aggregated[(0, slice(None), *voxel_zyx)].numpy(), expected, rtol=1e-5)


def test_single_voxel_volume_rejected():
    with pytest.raises(ValueError, match="at least 2 voxels"):
        neighbour_weights(torch.ones(1, 2, 1, 1, 1), torch.ones(1, 2, 1, 1, 1))


def make_inputs(requires_grad: bool):
    torch.manual_seed(4)
    image = torch.rand(1, 1, 8, 8, 8)
    level1 = torch.randn(1, 6, 8, 8, 8, requires_grad=requires_grad)
    level2 = torch.randn(1, 10, 4, 4, 4, requires_grad=requires_grad)
    logits = torch.randn(1, 3, 8, 8, 8, requires_grad=True)
    return image, [level1, level2], logits


def test_module_starts_as_identity():
    module = AttentionRefinement(1, (6, 10), channels=4)
    image, features, logits = make_inputs(requires_grad=False)
    refined = module(image, features, logits)
    assert torch.equal(refined, logits)


def test_module_uniform_guidance_gives_uniform_weights():
    module = AttentionRefinement(1, (6, 10), channels=4)
    image = torch.full((1, 1, 4, 4, 4), 0.5)
    features = [torch.ones(1, 6, 4, 4, 4), torch.ones(1, 10, 2, 2, 2)]
    logits = torch.randn(1, 3, 4, 4, 4)
    _, weights = module(image, features, logits, return_weights=True)
    valid = neighbour_validity((4, 4, 4))
    expected = valid.float() / valid.sum(dim=1, keepdim=True)
    assert torch.allclose(weights, expected, atol=1e-6)


def test_gradients_skip_encoder_features():
    module = AttentionRefinement(1, (6, 10), channels=4)
    torch.nn.init.normal_(module.r.weight)
    image, features, logits = make_inputs(requires_grad=True)
    module(image, features, logits).sum().backward()
    assert features[0].grad is None
    assert features[1].grad is None


def test_gradients_reach_module_and_logits():
    module = AttentionRefinement(1, (6, 10), channels=4)
    torch.nn.init.normal_(module.r.weight)
    image, features, logits = make_inputs(requires_grad=True)
    module(image, features, logits).square().sum().backward()
    assert module.squeeze_level2.weight.grad.abs().sum() > 0
    assert module.theta.weight.grad.abs().sum() > 0
    assert logits.grad is not None


def test_module_output_shape():
    module = AttentionRefinement(1, (6, 10), channels=4)
    image, features, logits = make_inputs(requires_grad=False)
    refined, weights = module(image, features, logits, return_weights=True)
    assert refined.shape == (1, 3, 8, 8, 8)
    assert weights.shape == (1, 18, 8, 8, 8)


def test_module_rejects_three_levels():
    with pytest.raises(ValueError, match="two encoder levels"):
        AttentionRefinement(1, (4, 8, 16))
