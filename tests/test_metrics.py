"""Tests of dramseg.metrics on small hand-built masks with hand-computed values."""

import math

import numpy as np
import pytest

from dramseg import metrics
from dramseg.intervals import parse_score_intervals

PAPER_INTERVALS = parse_score_intervals(
    {"0": [0.0, 0.0], "1": [0.01, 0.05], "2": [0.05, 0.25], "3": [0.25, 0.5], "4": [0.5, 0.75], "5": [0.75, 1.0]}
)


def box(shape, z, y, x):
    """Return a boolean z, y, x array with True inside the half-open box."""
    mask = np.zeros(shape, dtype=bool)
    mask[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = True
    return mask


SHAPE = (10, 10, 10)
# X: 4 x 4 x 4 = 64 voxels; Y: 4 x 4 x 2 = 32 voxels; X ∩ Y: 2 x 4 x 2 = 16 voxels.
PREDICTION = box(SHAPE, (0, 4), (0, 4), (0, 4))
REFERENCE = box(SHAPE, (2, 6), (0, 4), (0, 2))
LUNG = np.ones(SHAPE, dtype=bool)
EMPTY = np.zeros(SHAPE, dtype=bool)


def test_dice_overlapping_boxes():
    assert metrics.dice(PREDICTION, REFERENCE) == pytest.approx(2 * 16 / (64 + 32))


def test_false_discovery_rate_overlapping_boxes():
    assert metrics.false_discovery_rate(PREDICTION, REFERENCE) == pytest.approx(1 - 16 / 64)


def test_true_positive_rate_overlapping_boxes():
    assert metrics.true_positive_rate(PREDICTION, REFERENCE) == pytest.approx(16 / 32)


def test_apd_overlapping_boxes():
    assert metrics.absolute_percentage_difference(PREDICTION, REFERENCE, LUNG) == pytest.approx((64 - 32) / 1000)


def test_apd_empty_lung_raises():
    with pytest.raises(ValueError, match="lung mask is empty"):
        metrics.absolute_percentage_difference(PREDICTION, REFERENCE, EMPTY)


def test_metric_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        metrics.dice(PREDICTION, REFERENCE[:-1])


@pytest.mark.parametrize(
    ("metric", "prediction", "reference", "expected"),
    [
        (metrics.dice, EMPTY, EMPTY, 1.0),
        (metrics.dice, EMPTY, REFERENCE, 0.0),
        (metrics.dice, PREDICTION, EMPTY, 0.0),
        (metrics.false_discovery_rate, EMPTY, REFERENCE, 0.0),
        (metrics.false_discovery_rate, EMPTY, EMPTY, 0.0),
        (metrics.false_discovery_rate, PREDICTION, EMPTY, 1.0),
        (metrics.true_positive_rate, EMPTY, REFERENCE, 0.0),
        (metrics.true_positive_rate, PREDICTION, EMPTY, math.nan),
        (metrics.true_positive_rate, EMPTY, EMPTY, math.nan),
    ],
    ids=[
        "dice-both-empty",
        "dice-empty-prediction",
        "dice-empty-reference",
        "fdr-empty-prediction",
        "fdr-both-empty",
        "fdr-empty-reference",
        "tpr-empty-prediction",
        "tpr-empty-reference",
        "tpr-both-empty",
    ],
)
def test_metric_empty_masks(metric, prediction, reference, expected):
    value = metric(prediction, reference)
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == expected


def test_apd_both_empty_is_zero():
    assert metrics.absolute_percentage_difference(EMPTY, EMPTY, LUNG) == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [(EMPTY, EMPTY, 0.0), (EMPTY, REFERENCE, math.nan), (PREDICTION, EMPTY, math.nan)],
    ids=["both-empty", "empty-prediction", "empty-reference"],
)
def test_svrd_empty_masks(prediction, reference, expected):
    value = metrics.surface_volume_ratio_difference(prediction, reference, (1.0, 1.0, 1.0))
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == expected


@pytest.mark.parametrize(
    ("spacing_xyz_mm", "expected_mm2"),
    [
        # 4 x 4 x 4 voxels of 1 mm: six faces of 16 mm².
        ((1.0, 1.0, 1.0), 96.0),
        # Extent x 4 mm, y 8 mm, z 2 mm.
        ((1.0, 2.0, 0.5), 2 * (4 * 8 + 4 * 2 + 8 * 2)),
    ],
    ids=["isotropic", "anisotropic"],
)
def test_surface_faces_cube(spacing_xyz_mm, expected_mm2):
    assert metrics.surface_area_mm2(PREDICTION, spacing_xyz_mm, method="faces") == pytest.approx(expected_mm2)


def test_svrd_faces_hand_value():
    # X: 96 mm² / 64 mm³ = 1.5 per mm; Y (4 x 4 x 2): 64 mm² / 32 mm³ = 2.0 per mm.
    value = metrics.surface_volume_ratio_difference(PREDICTION, REFERENCE, (1.0, 1.0, 1.0), method="faces")
    assert value == pytest.approx(0.5)


def test_svrd_mesh_matches_surface_areas():
    spacing_xyz_mm = (0.7, 0.8, 1.5)
    voxel_mm3 = 0.7 * 0.8 * 1.5
    expected = abs(
        metrics.surface_area_mm2(PREDICTION, spacing_xyz_mm) / (64 * voxel_mm3)
        - metrics.surface_area_mm2(REFERENCE, spacing_xyz_mm) / (32 * voxel_mm3)
    )
    assert metrics.surface_volume_ratio_difference(PREDICTION, REFERENCE, spacing_xyz_mm) == pytest.approx(expected)


def test_surface_empty_mask_is_zero():
    assert metrics.surface_area_mm2(EMPTY, (1.0, 1.0, 1.0)) == 0.0


def test_surface_unknown_method_raises():
    with pytest.raises(ValueError, match="must be one of"):
        metrics.surface_area_mm2(PREDICTION, (1.0, 1.0, 1.0), method="exact")


def voxelised_sphere(radius_mm, spacing_xyz_mm):
    """Return a boolean z, y, x mask of a ball of radius_mm centred on a voxel centre."""
    spacing_zyx = spacing_xyz_mm[::-1]
    axes = [np.arange(-(int(radius_mm / step) + 3), int(radius_mm / step) + 4) * step for step in spacing_zyx]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return z**2 + y**2 + x**2 <= radius_mm**2


@pytest.mark.parametrize(
    ("spacing_xyz_mm", "radius_mm", "relative_tolerance"),
    [
        # Marching cubes on a binary mask measures spheres 7-9 % large (staircase).
        ((1.0, 1.0, 1.0), 10.0, 0.10),
        # With slices twice the in-plane spacing the excess grows to 9-12 %.
        ((0.8, 0.8, 1.6), 14.0, 0.15),
    ],
    ids=["isotropic", "anisotropic"],
)
def test_surface_mesh_sphere(spacing_xyz_mm, radius_mm, relative_tolerance):
    area = metrics.surface_area_mm2(voxelised_sphere(radius_mm, spacing_xyz_mm), spacing_xyz_mm)
    assert area == pytest.approx(4 * math.pi * radius_mm**2, rel=relative_tolerance)


@pytest.mark.parametrize(
    "spacing_xyz_mm", [(1.0, 1.0, 1.0), (0.5, 1.0, 2.0)], ids=["isotropic", "anisotropic"]
)
def test_surface_mesh_cube(spacing_xyz_mm):
    # A 20-voxel cube; marching cubes cuts its edges and corners, a few % of the area.
    mask = box((24, 24, 24), (2, 22), (2, 22), (2, 22))
    x, y, z = (20 * step for step in spacing_xyz_mm)
    expected = 2 * (x * y + y * z + x * z)
    assert metrics.surface_area_mm2(mask, spacing_xyz_mm) == pytest.approx(expected, rel=0.04)


def test_surface_mesh_mask_touching_border():
    # The zero padding closes a mask that fills the whole array.
    full = np.ones((20, 20, 20), dtype=bool)
    assert metrics.surface_area_mm2(full, (1.0, 1.0, 1.0)) == pytest.approx(6 * 400, rel=0.04)


def test_subtype_tpr_per_label():
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[0, 0, :10] = 1  # 10 ground-glass voxels
    labels[1, :2, :10] = 2  # 20 consolidation voxels
    prediction = np.zeros(SHAPE, dtype=bool)
    prediction[0, 0, :5] = True
    prediction[1] = True
    rates = metrics.subtype_true_positive_rates(prediction, labels)
    assert rates["ggo"] == pytest.approx(0.5)
    assert rates["consolidation"] == pytest.approx(1.0)
    assert math.isnan(rates["mixed"])


def slab_lobes():
    """Return a (5, 10, 10) lobe map whose slice i contains label i + 1 (100 voxels per lobe)."""
    lobes = np.zeros((5, 10, 10), dtype=np.uint8)
    for index in range(5):
        lobes[index] = index + 1
    return lobes


def test_lobe_scores_fractions_and_scores():
    lobes = slab_lobes()
    prediction = np.zeros(lobes.shape, dtype=bool)
    prediction[1].flat[:3] = True  # lll: 3 %
    prediction[2].flat[:30] = True  # rul: 30 %
    prediction[3] = True  # rll: 100 %
    prediction[4].flat[:50] = True  # rml: 50 %, on the boundary of scores 3 and 4
    scores = metrics.lobe_scores(prediction, lobes, (1.0, 1.0, 1.0), PAPER_INTERVALS)
    assert scores == {
        "lul": (0.0, 0),
        "lll": (pytest.approx(0.03), 1),
        "rul": (pytest.approx(0.3), 3),
        "rll": (1.0, 5),
        "rml": (pytest.approx(0.5), 4),
    }


def test_lobe_scores_missing_lobe_left_out():
    lobes = slab_lobes()
    lobes[lobes == 5] = 0
    scores = metrics.lobe_scores(np.zeros(lobes.shape, dtype=bool), lobes, (1.0, 1.0, 1.0), PAPER_INTERVALS)
    assert sorted(scores) == ["lll", "lul", "rll", "rul"]


def test_lobe_fractions_volumes_in_ml():
    lobes = slab_lobes()
    prediction = lobes == 2
    measured = metrics.lobe_fractions(prediction, lobes, (1.0, 2.0, 5.0))
    assert measured["lll"] == {"volume_ml": pytest.approx(1.0), "lesion_ml": pytest.approx(1.0), "lesion_fraction": 1.0}


def test_severity_accuracy_hand_value():
    assert metrics.severity_accuracy([0, 1, 2], [0, 1, 1]) == pytest.approx(2 / 3)


def test_severity_accuracy_no_lobes_nan():
    assert math.isnan(metrics.severity_accuracy([], []))


# Hand-computed 3 x 3 example. Table (rows reference, columns predicted):
# [[2, 1, 0], [0, 2, 1], [0, 1, 3]], N = 10, weights |i - j| / 2.
# Observed disagreement 0.15; marginals rows (0.3, 0.3, 0.4), columns (0.2, 0.4, 0.4);
# expected disagreement 0.18 + 0.09 + 0.16 = 0.43; kappa = 1 - 0.15 / 0.43 = 28 / 43.
KAPPA_REFERENCE = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
KAPPA_PREDICTED = [0, 0, 1, 1, 1, 2, 2, 2, 2, 1]


@pytest.mark.parametrize("categories", [range(3), range(6)], ids=["three", "six"])
def test_kappa_hand_example(categories):
    assert metrics.linear_weighted_kappa(KAPPA_REFERENCE, KAPPA_PREDICTED, categories) == pytest.approx(28 / 43)


def test_kappa_perfect_agreement():
    assert metrics.linear_weighted_kappa([0, 1, 2, 5, 3], [0, 1, 2, 5, 3]) == pytest.approx(1.0)


def test_kappa_one_category_nan():
    assert math.isnan(metrics.linear_weighted_kappa([2, 2, 2], [2, 2, 2]))


def test_kappa_unknown_score_raises():
    with pytest.raises(ValueError, match=r"\[6\]"):
        metrics.linear_weighted_kappa([0, 6], [0, 1])


def test_kappa_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        metrics.linear_weighted_kappa([0, 1], [0])


def test_bootstrap_contains_point_estimate():
    reference, predicted = KAPPA_REFERENCE * 5, KAPPA_PREDICTED * 5
    low, high = metrics.bootstrap_kappa_interval(reference, predicted, samples=300, confidence=0.95, seed=3)
    kappa = metrics.linear_weighted_kappa(reference, predicted)
    assert low < kappa < high


def test_bootstrap_same_seed_same_interval():
    first = metrics.bootstrap_kappa_interval(KAPPA_REFERENCE, KAPPA_PREDICTED, samples=200, confidence=0.9, seed=7)
    second = metrics.bootstrap_kappa_interval(KAPPA_REFERENCE, KAPPA_PREDICTED, samples=200, confidence=0.9, seed=7)
    assert first == second


def test_bootstrap_other_seed_other_interval():
    first = metrics.bootstrap_kappa_interval(KAPPA_REFERENCE, KAPPA_PREDICTED, samples=200, confidence=0.9, seed=7)
    second = metrics.bootstrap_kappa_interval(KAPPA_REFERENCE, KAPPA_PREDICTED, samples=200, confidence=0.9, seed=8)
    assert first != second


def test_bootstrap_no_lobes_nan():
    low, high = metrics.bootstrap_kappa_interval([], [], samples=10, confidence=0.95, seed=0)
    assert math.isnan(low)
    assert math.isnan(high)


def test_bootstrap_invalid_confidence_raises():
    with pytest.raises(ValueError, match="confidence"):
        metrics.bootstrap_kappa_interval([0, 1], [0, 1], samples=10, confidence=95, seed=0)
