"""Tests of synthetic lesions on a small phantom lung with a vessel."""

import numpy as np
import pytest

from dramseg.anatomy import LOBE_LABELS
from dramseg.demo import lesions
from dramseg.intervals import fraction_to_score, parse_score_intervals

SPACING_ZYX_MM = (2.5, 1.0, 1.0)
INTERVALS = parse_score_intervals(
    {"0": [0, 0], "1": [0.01, 0.05], "2": [0.05, 0.25], "3": [0.25, 0.5], "4": [0.5, 0.75], "5": [0.75, 1.0]}
)
VESSEL_HU = 60.0


def settings(**subtypes):
    return {
        "subtype_probabilities": subtypes or {"ggo": 0.5, "consolidation": 0.2, "mixed": 0.3},
        "ggo_hu": [-750, -400],
        "consolidation_hu": [-150, 50],
        "edge_width_mm": 2.0,
        "max_foci_per_lobe": 6,
    }


@pytest.fixture(scope="module")
def phantom():
    """Return CT (float32 HU), lobes (uint8) and a vessel mask: five slab lobes in soft tissue."""
    rng = np.random.default_rng(0)
    shape = (24, 64, 100)
    ct = (40.0 + rng.normal(0, 12, shape)).astype(np.float32)
    lobes = np.zeros(shape, dtype=np.uint8)
    lung = (slice(2, 22), slice(6, 58), slice(5, 95))
    ct[lung] = -850.0 + rng.normal(0, 12, ct[lung].shape)
    for index, label in enumerate([3, 5, 4, 1, 2]):
        lobes[2:22, 6:58, 5 + 18 * index : 5 + 18 * (index + 1)] = label
    vessel = np.zeros(shape, dtype=bool)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    vessel[(((y - 30) ** 2 + (x - 77) ** 2) <= 4) & (z >= 2) & (z < 22)] = True
    ct[vessel] = VESSEL_HU
    return ct, lobes, vessel


@pytest.mark.parametrize("fraction", [0.012, 0.03, 0.1, 0.3, 0.6, 0.9, 0.99])
def test_synthesize_hits_fraction(phantom, fraction):
    ct, lobes, _ = phantom
    _, reference, achieved, _ = lesions.synthesize_lesions(
        ct, lobes, SPACING_ZYX_MM, {"lul": fraction}, settings(), np.random.default_rng(1)
    )
    lobe = lobes == LOBE_LABELS["lul"]
    measured = (reference[lobe] > 0).sum() / lobe.sum()
    # Stated tolerance: 0.002 absolute (the threshold picks whole voxels, so the error is below one voxel).
    assert abs(achieved["lul"] - fraction) <= 0.002
    assert measured == pytest.approx(achieved["lul"])


def test_synthesize_stays_inside_lobe(phantom):
    ct, lobes, _ = phantom
    targets = {"lul": 0.4, "rml": 0.7}
    _, reference, achieved, _ = lesions.synthesize_lesions(
        ct, lobes, SPACING_ZYX_MM, targets, settings(), np.random.default_rng(2)
    )
    allowed = np.isin(lobes, [LOBE_LABELS["lul"], LOBE_LABELS["rml"]])
    assert not (reference[~allowed] > 0).any()
    assert achieved["rll"] == 0.0


def test_synthesize_leaves_unlesioned_lobes_unchanged(phantom):
    ct, lobes, _ = phantom
    lesioned, _, _, _ = lesions.synthesize_lesions(
        ct, lobes, SPACING_ZYX_MM, {"lul": 0.5}, settings(), np.random.default_rng(3)
    )
    other = np.isin(lobes, [LOBE_LABELS["rul"], LOBE_LABELS["rml"], LOBE_LABELS["rll"]])
    np.testing.assert_array_equal(lesioned[other], ct[other])


def test_ggo_keeps_vessels(phantom):
    ct, lobes, vessel = phantom
    lesioned, reference, _, _ = lesions.synthesize_lesions(
        ct, lobes, SPACING_ZYX_MM, {"lll": 0.97}, settings(ggo=1.0), np.random.default_rng(4)
    )
    lesion_tissue = (reference == lesions.GGO) & ~vessel
    assert vessel[reference > 0].any()
    assert lesioned[vessel].mean() > np.median(lesioned[lesion_tissue]) + 300.0
    assert lesioned[lesion_tissue].mean() > -760.0


def test_consolidation_hides_vessels(phantom):
    ct, lobes, vessel = phantom
    lesioned, reference, _, _ = lesions.synthesize_lesions(
        ct, lobes, SPACING_ZYX_MM, {"lll": 0.97}, settings(consolidation=1.0), np.random.default_rng(5)
    )
    covered = vessel & (reference == lesions.CONSOLIDATION)
    lesion_tissue = (reference == lesions.CONSOLIDATION) & ~vessel
    assert covered.any()
    assert abs(lesioned[covered].mean() - np.median(lesioned[lesion_tissue])) < 120.0


def test_mixed_has_dense_core(phantom):
    ct, lobes, _ = phantom
    lesioned, reference, _, subtype_voxels = lesions.synthesize_lesions(
        ct, lobes, SPACING_ZYX_MM, {"rul": 0.9}, settings(mixed=1.0), np.random.default_rng(6)
    )
    values = lesioned[reference == lesions.MIXED]
    assert subtype_voxels["mixed"] == values.size
    assert values.max() > -200.0
    assert np.percentile(values, 5) < -350.0


@pytest.mark.parametrize("score", range(6))
def test_draw_fraction_matches_score(score):
    rng = np.random.default_rng(score)
    for _ in range(200):
        fraction = lesions.draw_fraction(score, INTERVALS, rng)
        assert fraction_to_score(fraction, INTERVALS) == score
        if score > 0:
            low, high = INTERVALS[score]
            assert low + 0.01 <= fraction <= high - 0.01


def test_draw_scores_forced_lobe():
    scores = lesions.draw_scores(np.random.default_rng(0), [1, 0, 0, 0, 0, 0], forced=("rml", 5))
    assert scores == {"lul": 0, "lll": 0, "rul": 0, "rll": 0, "rml": 5}


def test_draw_scores_rejects_bad_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        lesions.draw_scores(np.random.default_rng(0), [0.5, 0.1])


@pytest.mark.parametrize(
    ("fractions", "subtypes", "expected"),
    [
        ({"lul": 0, "rul": 0}, {"ggo": 0, "consolidation": 0, "mixed": 0}, 1),
        ({"lul": 0.1, "rul": 0.2}, {"ggo": 90, "consolidation": 10, "mixed": 0}, 5),
        ({"lul": 0.1, "rul": 0.2}, {"ggo": 10, "consolidation": 90, "mixed": 0}, 4),
        ({"lul": 0.1, "rul": 0.0}, {"ggo": 100, "consolidation": 0, "mixed": 0}, 4),
    ],
)
def test_corads_rule(fractions, subtypes, expected):
    assert lesions.corads_from_lesions(fractions, subtypes) == expected


def test_rater_errors_rate_zero_and_one():
    scores = {"lul": 0, "lll": 5, "rul": 2, "rll": 3, "rml": 1}
    assert lesions.apply_rater_errors(scores, 0.0, 5, np.random.default_rng(0)) == scores
    shifted = lesions.apply_rater_errors(scores, 1.0, 5, np.random.default_rng(0))
    for name, score in scores.items():
        assert abs(shifted[name] - score) <= 1
        assert 0 <= shifted[name] <= 5
    assert shifted["rul"] != scores["rul"]


def test_estimate_noise_sd():
    rng = np.random.default_rng(0)
    ct = (30.0 + rng.normal(0, 15, (20, 60, 60))).astype(np.float32)
    assert lesions.estimate_noise_sd(ct) == pytest.approx(15.0, rel=0.15)
