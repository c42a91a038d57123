"""Losses of the dRAM training: interval regression, equivariance, refinement and baselines.

Channel order of the regression output: 0 background, 1 vessel, 2 lesion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKGROUND, VESSEL, LESION = 0, 1, 2

# Lower bound of probabilities before taking their logarithm.
PROBABILITY_FLOOR = 1e-7


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Return float16 and bfloat16 tensors as float32, because sums over a chunk lose precision in them."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Divide, returning 0 where the denominator is 0 (no NaN, no gradient blow-up)."""
    return numerator / denominator.clamp(min=torch.finfo(numerator.dtype).tiny)


def lobe_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average `values` [B, D, H, W] inside `mask` [B, D, H, W] (bool or 0/1 float).

    Returns [B]: the lobe-wise mean pooling P(.), or 0 for an empty mask.
    Half-precision values are averaged in float32.
    """
    values = _at_least_float32(values)
    weights = mask.to(values.dtype)
    total = weights.flatten(1).sum(dim=1)
    inside = (values * weights).flatten(1).sum(dim=1)
    return _safe_divide(inside, total)


def interval_loss(p: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Return the interval regression loss per sample, shape [B].

    L_INT = max(0, (p - (low + high) / 2)**2 - ((high - low) / 2)**2), which
    is 0 for low <= p <= high and grows quadratically outside the interval.
    For a zero-width interval [0, 0] it is p**2.
    """
    centre = (low + high) / 2
    half_width = (high - low) / 2
    return F.relu((p - centre) ** 2 - half_width**2)


def equivariance_loss(
    prediction_of_transformed: torch.Tensor,
    transformed_prediction: torch.Tensor,
    valid_mask: torch.Tensor,
) -> torch.Tensor:
    """Return the mean absolute difference |F(T(I)) - T(F(I))| inside `valid_mask`.

    Args:
        prediction_of_transformed: [B, C, ...] F(T(I)).
        transformed_prediction: [B, C, ...] T(F(I)) on the same grid.
        valid_mask: [B, 1, ...] voxels where both are defined, e.g. T(lobe mask).

    Returns:
        Scalar mean over the C channels and the voxels inside the mask; 0 for
        an empty mask.
    """
    if prediction_of_transformed.shape != transformed_prediction.shape:
        raise ValueError(
            "equivariance_loss compares maps of the same shape, found "
            f"{list(prediction_of_transformed.shape)} and {list(transformed_prediction.shape)}"
        )
    channels = prediction_of_transformed.shape[1]
    if valid_mask.dim() != prediction_of_transformed.dim() or valid_mask.shape[1] != 1:
        raise ValueError(
            f"valid_mask must be [B, 1, ...] for maps of shape {list(prediction_of_transformed.shape)}, "
            f"found {list(valid_mask.shape)}"
        )
    difference = _at_least_float32(prediction_of_transformed - transformed_prediction).abs()
    weights = valid_mask.to(difference.dtype)
    difference = difference * weights
    return _safe_divide(difference.sum(), weights.sum() * channels)


@torch.no_grad()
def refinement_targets(
    probabilities: torch.Tensor,
    candidates: torch.Tensor,
    vessels: torch.Tensor,
    lobe_mask: torch.Tensor,
) -> torch.Tensor:
    """Build the pseudo labels t* of the refinement loss, a LongTensor [B, ...].

    Inside the lobe: lesion (2) where the current dRAM's argmax is the lesion
    channel and the voxel is a lesion candidate, vessel (1) where a vessel was
    detected, background (0) elsewhere. A voxel that is both a detected vessel
    and a lesion is labelled vessel, because candidates exclude vessels by
    construction. Voxels outside the lobe are background. No gradient flows
    through the targets.

    Args:
        probabilities: [B, 3, ...] current dRAM (softmax output).
        candidates, vessels, lobe_mask: [B, ...] bool or 0/1 masks.
    """
    inside = lobe_mask.bool()
    lesion = (probabilities.argmax(dim=1) == LESION) & candidates.bool() & inside
    targets = torch.full(lesion.shape, BACKGROUND, dtype=torch.long, device=probabilities.device)
    targets[lesion] = LESION
    targets[vessels.bool() & inside] = VESSEL
    return targets


def bootstrapped_cross_entropy(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    beta: float = 0.9,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the bootstrapped cross-entropy, averaged over the voxels in `mask`.

    Per voxel: -sum_c [beta * t*_c + (1 - beta) * z_c] * log q_c, where t* is
    the one-hot target, q the predicted probabilities and z the one-hot argmax
    of q (detached). Probabilities are floored at PROBABILITY_FLOOR before the
    logarithm.

    Args:
        probabilities: [B, C, ...] softmax output q.
        targets: [B, ...] class indices (LongTensor).
        beta: weight of the target labels, in [0, 1].
        mask: optional [B, ...] voxels to average over; all voxels when None.
            An empty mask gives 0.
    """
    probabilities = _at_least_float32(probabilities)
    classes = probabilities.shape[1]
    log_q = probabilities.clamp(min=PROBABILITY_FLOOR).log()
    target_one_hot = F.one_hot(targets.long(), classes).movedim(-1, 1).to(probabilities.dtype)
    argmax_one_hot = F.one_hot(probabilities.detach().argmax(dim=1), classes).movedim(-1, 1)
    soft_target = beta * target_one_hot + (1.0 - beta) * argmax_one_hot.to(probabilities.dtype)
    per_voxel = -(soft_target * log_q).sum(dim=1)
    if mask is None:
        return per_voxel.mean()
    weights = mask.to(per_voxel.dtype)
    return _safe_divide((per_voxel * weights).sum(), weights.sum())


def dice_cross_entropy_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    lesion_class: int = LESION,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Return cross-entropy plus (1 - soft Dice of the lesion class) for the supervised network.

    Args:
        logits: [B, C, ...] network logits.
        targets: [B, ...] class indices (LongTensor).
        mask: optional [B, ...] voxels taken into account; all when None.
        lesion_class: channel whose soft Dice is computed.
        smooth: added to the Dice numerator and denominator (voxels), so a
            sample without lesion and without predicted lesion scores 1.

    The cross-entropy is the mean over voxels in the mask; the soft Dice is
    computed per sample and averaged over the batch.
    """
    logits = _at_least_float32(logits)
    if mask is None:
        weights = torch.ones(targets.shape, dtype=logits.dtype, device=logits.device)
    else:
        weights = mask.to(logits.dtype)
    per_voxel = F.cross_entropy(logits, targets.long(), reduction="none")
    cross_entropy = _safe_divide((per_voxel * weights).sum(), weights.sum())

    lesion_probability = torch.softmax(logits, dim=1)[:, lesion_class] * weights
    lesion_target = (targets == lesion_class).to(logits.dtype) * weights
    overlap = (lesion_probability * lesion_target).flatten(1).sum(dim=1)
    total = lesion_probability.flatten(1).sum(dim=1) + lesion_target.flatten(1).sum(dim=1)
    dice = (2 * overlap + smooth) / (total + smooth)
    return cross_entropy + (1 - dice).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy of class logits [B, 2] against labels [B] (0 or 1)."""
    return F.cross_entropy(logits, labels.long())


def weighted_total(terms: dict[str, torch.Tensor], loss_weights: dict[str, float]) -> torch.Tensor:
    """Sum loss terms with the weights of training.loss_weights, e.g. 2 L_INT + L_ER + L_REF.

    Args:
        terms: scalar losses by name ("interval", "er", "ref", ...).
        loss_weights: weight of each name; a name missing here raises ValueError.
    """
    missing = [name for name in terms if name not in loss_weights]
    if missing:
        raise ValueError(
            f"training.loss_weights lacks {', '.join(missing)}; "
            f"it has {', '.join(sorted(loss_weights))}. Add a weight for each loss term"
        )
    if not terms:
        raise ValueError("weighted_total needs at least one loss term")
    total = None
    for name, term in terms.items():
        weighted = float(loss_weights[name]) * term
        total = weighted if total is None else total + weighted
    return total
