"""Tests of the training losses against hand-computed values."""

import math

import pytest
import torch

from dramseg.losses import (
    bootstrapped_cross_entropy,
    classification_loss,
    dice_cross_entropy_loss,
    equivariance_loss,
    interval_loss,
    lobe_mean,
    refinement_targets,
    weighted_total,
)


def test_lobe_mean_inside_mask():
    values = torch.tensor([[[[0.2, 0.4], [0.6, 1.0]]]])
    mask = torch.tensor([[[[1, 1], [0, 1]]]], dtype=torch.bool)
    assert lobe_mean(values, mask).item() == pytest.approx((0.2 + 0.4 + 1.0) / 3)


def test_lobe_mean_per_sample():
    values = torch.stack([torch.full((2, 2, 2), 0.25), torch.full((2, 2, 2), 0.75)])
    mask = torch.ones(2, 2, 2, 2)
    assert torch.allclose(lobe_mean(values, mask), torch.tensor([0.25, 0.75]))


def test_lobe_mean_empty_mask_is_zero():
    values = torch.rand(1, 2, 2, 2, requires_grad=True)
    mean = lobe_mean(values, torch.zeros(1, 2, 2, 2))
    mean.sum().backward()
    assert mean.item() == 0.0
    assert torch.isfinite(values.grad).all()


@pytest.mark.parametrize(
    "p, low, high, expected",
    [
        (0.3, 0.25, 0.5, 0.0),  # inside
        (0.25, 0.25, 0.5, 0.0),  # on the lower bound
        (0.5, 0.25, 0.5, 0.0),  # on the upper bound
        (0.1, 0.25, 0.5, 0.06),  # below: (0.1 - 0.375)^2 - 0.125^2
        (0.8, 0.25, 0.5, 0.165),  # above: (0.8 - 0.375)^2 - 0.125^2
        (0.2, 0.0, 0.0, 0.04),  # zero-width interval of score 0: p^2
        (0.0, 0.0, 0.0, 0.0),
    ],
)
def test_interval_loss_values(p, low, high, expected):
    loss = interval_loss(torch.tensor([p]), torch.tensor([low]), torch.tensor([high]))
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_interval_loss_per_sample_shape():
    loss = interval_loss(torch.rand(4), torch.zeros(4), torch.full((4,), 0.5))
    assert loss.shape == (4,)


def test_equivariance_loss_inside_mask():
    first = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 2, 2)
    second = torch.tensor([1.5, 2.0, 0.0, 10.0]).reshape(1, 1, 1, 2, 2)
    mask = torch.tensor([1, 1, 1, 0]).reshape(1, 1, 1, 2, 2)
    assert equivariance_loss(first, second, mask).item() == pytest.approx((0.5 + 0.0 + 3.0) / 3)


def test_equivariance_loss_averages_channels():
    first = torch.zeros(1, 2, 1, 1, 2)
    second = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 1, 2)
    mask = torch.ones(1, 1, 1, 1, 2)
    assert equivariance_loss(first, second, mask).item() == pytest.approx(2.5)


def test_equivariance_loss_empty_mask_is_zero():
    loss = equivariance_loss(torch.rand(1, 3, 2, 2, 2), torch.rand(1, 3, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2))
    assert loss.item() == 0.0


def test_equivariance_loss_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        equivariance_loss(torch.rand(1, 3, 2, 2, 2), torch.rand(1, 3, 2, 2, 4), torch.ones(1, 1, 2, 2, 2))


def probabilities_from_argmax(argmax: list[int]) -> torch.Tensor:
    """[1, 3, N] probabilities whose argmax at voxel n is argmax[n]."""
    probabilities = torch.full((1, 3, len(argmax)), 0.1)
    for index, label in enumerate(argmax):
        probabilities[0, label, index] = 0.8
    return probabilities


def test_refinement_targets_cases():
    # voxel: 0 lesion+candidate, 1 lesion not candidate, 2 candidate not lesion,
    # 3 vessel+lesion+candidate, 4 vessel only, 5 lesion+candidate outside lobe
    probabilities = probabilities_from_argmax([2, 2, 0, 2, 0, 2])
    candidates = torch.tensor([[1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    vessels = torch.tensor([[0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    lobe = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    targets = refinement_targets(probabilities, candidates, vessels, lobe)
    assert targets.tolist() == [[2, 0, 0, 1, 1, 0]]


def test_refinement_targets_dtype_and_no_grad():
    probabilities = probabilities_from_argmax([2, 0]).requires_grad_(True)
    ones = torch.ones(1, 2, dtype=torch.bool)
    targets = refinement_targets(probabilities, ones, ~ones, ones)
    assert targets.dtype == torch.long
    assert not targets.requires_grad


def bootstrap_inputs():
    probabilities = torch.tensor([[0.2, 0.6], [0.3, 0.3], [0.5, 0.1]]).reshape(1, 3, 2)
    targets = torch.tensor([[0, 0]])
    return probabilities, targets


def test_bootstrapped_cross_entropy_value():
    probabilities, targets = bootstrap_inputs()
    # Voxel 0: target 0, argmax 2. Voxel 1: target 0, argmax 0.
    first = -(0.9 * math.log(0.2) + 0.1 * math.log(0.5))
    second = -math.log(0.6)
    loss = bootstrapped_cross_entropy(probabilities, targets, beta=0.9)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_bootstrapped_cross_entropy_mask():
    probabilities, targets = bootstrap_inputs()
    mask = torch.tensor([[True, False]])
    expected = -(0.9 * math.log(0.2) + 0.1 * math.log(0.5))
    loss = bootstrapped_cross_entropy(probabilities, targets, beta=0.9, mask=mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bootstrapped_cross_entropy_beta_one_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4)
    targets = torch.randint(0, 3, (2, 4, 4, 4))
    loss = bootstrapped_cross_entropy(torch.softmax(logits, dim=1), targets, beta=1.0)
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bootstrapped_cross_entropy_empty_mask_is_zero():
    probabilities, targets = bootstrap_inputs()
    loss = bootstrapped_cross_entropy(probabilities, targets, mask=torch.zeros(1, 2, dtype=torch.bool))
    assert loss.item() == 0.0


def test_dice_cross_entropy_value():
    logits = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]).reshape(1, 3, 2)
    targets = torch.tensor([[2, 0]])
    q = torch.softmax(logits, dim=1)[0]
    cross_entropy = -(math.log(q[2, 0]) + math.log(q[0, 1])) / 2
    lesion = q[2].tolist()
    dice = (2 * lesion[0] + 1.0) / (lesion[0] + lesion[1] + 1.0 + 1.0)
    loss = dice_cross_entropy_loss(logits, targets)
    assert loss.item() == pytest.approx(cross_entropy + 1 - dice, rel=1e-6)


def test_dice_cross_entropy_mask_ignores_voxels():
    logits = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]).reshape(1, 3, 2)
    mask = torch.tensor([[True, False]])
    changed_targets = torch.tensor([[2, 1]])
    original = dice_cross_entropy_loss(logits, torch.tensor([[2, 0]]), mask=mask)
    changed = dice_cross_entropy_loss(logits, changed_targets, mask=mask)
    assert changed.item() == pytest.approx(original.item())


def test_dice_cross_entropy_perfect_prediction_near_zero():
    targets = torch.tensor([[0, 1, 2, 2]])
    logits = 50.0 * torch.nn.functional.one_hot(targets, 3).movedim(-1, 1).float()
    assert dice_cross_entropy_loss(logits, targets).item() == pytest.approx(0.0, abs=1e-6)


def test_classification_loss_value():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    # softmax = [0.25, 0.75]
    assert classification_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))


def test_lobe_mean_bfloat16_averaged_in_float32():
    values = torch.full((1, 64, 64, 64), 0.3).to(torch.bfloat16)
    mean = lobe_mean(values, torch.ones(1, 64, 64, 64))
    assert mean.dtype == torch.float32
    assert mean.item() == pytest.approx(float(values[0, 0, 0, 0]), rel=1e-6)


def test_weighted_total_value():
    terms = {"interval": torch.tensor(0.5), "er": torch.tensor(0.25), "ref": torch.tensor(1.0)}
    weights = {"interval": 2.0, "er": 1.0, "ref": 1.0, "classification": 1.0}
    assert weighted_total(terms, weights).item() == pytest.approx(2.25)


def test_weighted_total_missing_weight():
    with pytest.raises(ValueError, match="lacks ref"):
        weighted_total({"ref": torch.tensor(1.0)}, {"interval": 2.0})
