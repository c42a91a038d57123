"""Severity scores, lesion-fraction intervals and their calibration with candidate lesions.

A lobe's severity score (0-5) stands for an interval of lesion volume over lobe
volume (paper Table I b). Training regresses the lobe's mean lesion probability
into that interval, after narrowing it with the fraction p* of candidate-lesion
voxels (paper Eq. 2).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence


def parse_score_intervals(table: Mapping[str, Sequence[float]]) -> dict[int, tuple[float, float]]:
    """Convert the config's `score_intervals` (string keys) to {score: (low, high)}.

    Raises ValueError when scores are not 0..N without gaps, an interval is
    reversed, or intervals of consecutive scores overlap or leave a gap.
    """
    intervals = {int(score): (float(low), float(high)) for score, (low, high) in table.items()}
    scores = sorted(intervals)
    if scores != list(range(len(scores))):
        raise ValueError(f"score_intervals must have the keys 0..{len(scores) - 1} without gaps, found {scores}")
    for score in scores:
        low, high = intervals[score]
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"score_intervals[{score}] = [{low}, {high}] must satisfy 0 <= low <= high <= 1")
    for score in scores[2:]:
        if not math.isclose(intervals[score][0], intervals[score - 1][1]):
            raise ValueError(
                f"score_intervals[{score}] starts at {intervals[score][0]} but score {score - 1} ends at "
                f"{intervals[score - 1][1]}; intervals of scores 1 and above must be contiguous"
            )
    return intervals


def score_to_interval(score: int, intervals: Mapping[int, tuple[float, float]]) -> tuple[float, float]:
    """Return the lesion-fraction interval (low, high) of a severity score."""
    if score not in intervals:
        raise ValueError(f"severity score {score!r} is not one of {sorted(intervals)}")
    return intervals[score]


def fraction_to_score(fraction: float, intervals: Mapping[int, tuple[float, float]]) -> int:
    """Return the severity score whose interval contains a lesion fraction.

    Boundaries: a fraction of exactly 0 is score 0. Any positive fraction below
    the low end of score 1 (0 < p < 1 % with the default table) is score 1,
    since the CT severity score gives any visible involvement at least 1. A
    fraction on the boundary between two scores takes the higher score, except
    that 1.0 is the top score.
    """
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise ValueError(f"lesion fraction {fraction!r} must lie in [0, 1]")
    if fraction == 0.0:
        return 0
    top = max(intervals)
    for score in range(top, 0, -1):
        if fraction >= intervals[score][0]:
            return score
    return 1


def calibrate_interval(low: float, high: float, p_star: float, tolerance: float) -> tuple[float, float]:
    """Narrow a score interval with the candidate fraction p* (paper Eq. 2).

    r_l = max(min(r*_l, p* - tolerance), 0) and r_u = min(r*_u, p* + tolerance).
    The lower bound only moves down, towards p* - tolerance, and the upper bound
    only moves down, towards p* + tolerance. Because low <= high and
    p* - tolerance < p* + tolerance, the result always satisfies low <= high.
    """
    calibrated_low = max(min(low, p_star - tolerance), 0.0)
    calibrated_high = min(high, p_star + tolerance)
    return calibrated_low, calibrated_high
