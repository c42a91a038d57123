import math

import pytest

from dramseg.intervals import calibrate_interval, fraction_to_score, parse_score_intervals, score_to_interval

PAPER_TABLE = {
    "0": [0.0, 0.0],
    "1": [0.01, 0.05],
    "2": [0.05, 0.25],
    "3": [0.25, 0.50],
    "4": [0.50, 0.75],
    "5": [0.75, 1.00],
}


@pytest.fixture
def intervals():
    return parse_score_intervals(PAPER_TABLE)


@pytest.mark.parametrize(
    "fraction, score",
    [
        (0.0, 0),
        (0.001, 1),  # below 1 %: still visible involvement
        (0.01, 1),
        (0.049, 1),
        (0.05, 2),  # a boundary takes the higher score
        (0.2499, 2),
        (0.25, 3),
        (0.5, 4),
        (0.75, 5),
        (1.0, 5),
    ],
)
def test_fraction_to_score_boundaries(intervals, fraction, score):
    assert fraction_to_score(fraction, intervals) == score


@pytest.mark.parametrize("fraction", [-0.01, 1.01, math.nan])
def test_fraction_to_score_rejects_outside(intervals, fraction):
    with pytest.raises(ValueError):
        fraction_to_score(fraction, intervals)


def test_score_to_interval_known(intervals):
    assert score_to_interval(3, intervals) == (0.25, 0.5)


def test_score_to_interval_unknown(intervals):
    with pytest.raises(ValueError, match="severity score 6"):
        score_to_interval(6, intervals)


@pytest.mark.parametrize(
    "low, high, p_star, expected",
    [
        (0.05, 0.25, 0.10, (0.05, 0.15)),  # p* inside: upper bound narrows
        (0.05, 0.25, 0.02, (0.0, 0.07)),  # p* below the interval: both bounds drop
        (0.05, 0.25, 0.60, (0.05, 0.25)),  # p* above: unchanged
        (0.0, 0.0, 0.30, (0.0, 0.0)),  # score 0 stays [0, 0]
        (0.75, 1.0, 0.40, (0.35, 0.45)),
    ],
)
def test_calibrate_interval_cases(low, high, p_star, expected):
    calibrated = calibrate_interval(low, high, p_star, 0.05)
    assert calibrated == pytest.approx(expected)


@pytest.mark.parametrize("p_star", [0.0, 0.01, 0.3, 0.99, 1.0])
@pytest.mark.parametrize("score", range(6))
def test_calibrate_interval_ordered(intervals, score, p_star):
    low, high = calibrate_interval(*intervals[score], p_star, 0.05)
    assert 0.0 <= low <= high


def test_parse_score_intervals_gap():
    table = dict(PAPER_TABLE)
    table["3"] = [0.3, 0.5]
    with pytest.raises(ValueError, match="contiguous"):
        parse_score_intervals(table)


def test_parse_score_intervals_reversed():
    table = dict(PAPER_TABLE)
    table["2"] = [0.25, 0.05]
    with pytest.raises(ValueError, match="low <= high"):
        parse_score_intervals(table)
