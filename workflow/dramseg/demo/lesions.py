"""Synthetic COVID-19 lesions per lobe: target fractions, irregular shapes, subtypes, scores.

Every lesion voxel lies inside its lobe, and the lesion volume of each lobe
equals the requested fraction of the lobe volume up to rounding to whole voxels.
Reference labels: 0 background, 1 ground-glass opacity (GGO), 2 consolidation, 3 mixed.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from dramseg.anatomy import LEFT_LOBES, LOBE_LABELS, LOBE_NAMES, SUBTYPES
from dramseg.intervals import fraction_to_score

LOGGER = logging.getLogger(__name__)

GGO, CONSOLIDATION, MIXED = 1, 2, 3
SUBTYPE_LABELS = {name: label for label, name in SUBTYPES.items()}
# Drawn fractions keep this distance from the ends of their score interval.
BOUNDARY_MARGIN = 0.01
# Scale of the irregular texture of lesion shapes and of the peripheral preference, mm.
SHAPE_NOISE_MM = 6.0
PERIPHERY_MM = 15.0
# Mixed lesions: consolidation core deeper than this below the lesion surface, mm.
MIXED_RIM_MM = 3.0
# Amplitude of the slow attenuation texture inside lesions, HU.
TEXTURE_HU = 40.0


def draw_scores(
    rng: np.random.Generator, score_probabilities: Sequence[float], forced: tuple[str, int] | None = None
) -> dict[str, int]:
    """Draw a target severity score per lobe; `forced` = (lobe, score) overrides one lobe."""
    probabilities = np.asarray(score_probabilities, dtype=float)
    if probabilities.ndim != 1 or probabilities.min() < 0 or not np.isclose(probabilities.sum(), 1.0):
        raise ValueError(f"demo.lesions.score_probabilities must be non-negative and sum to 1, found {score_probabilities}")
    scores = {name: int(rng.choice(len(probabilities), p=probabilities)) for name in LOBE_NAMES}
    if forced is not None:
        lobe, score = forced
        scores[lobe] = score
    return scores


def draw_fraction(score: int, intervals: Mapping[int, tuple[float, float]], rng: np.random.Generator) -> float:
    """Draw a lesion fraction inside a score's interval, at least 0.01 away from its ends (0 for score 0)."""
    low, high = intervals[score]
    if high <= 0.0:
        return 0.0
    return float(rng.uniform(low + BOUNDARY_MARGIN, high - BOUNDARY_MARGIN))


def estimate_noise_sd(ct_zyx: np.ndarray) -> float:
    """Estimate the image noise SD (HU) from neighbouring soft-tissue voxels along x.

    Uses voxel pairs whose values both lie in [-50, 100] HU; the robust SD
    (1.4826 x median absolute deviation) of their difference divided by sqrt(2)
    is the noise SD of one voxel. Returns 10 HU when fewer than 1000 pairs exist.
    """
    left = ct_zyx[:, :, :-1]
    right = ct_zyx[:, :, 1:]
    tissue = (left > -50) & (left < 100) & (right > -50) & (right < 100)
    differences = (right[tissue] - left[tissue]).astype(np.float32)
    if differences.size < 1000:
        return 10.0
    differences = differences[:: max(1, differences.size // 200_000)]
    mad = np.median(np.abs(differences - np.median(differences)))
    return float(1.4826 * mad / np.sqrt(2.0))


def synthesize_lesions(
    ct_zyx: np.ndarray,
    lobes_zyx: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    target_fractions: Mapping[str, float],
    settings: Mapping,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, float], dict[str, int]]:
    """Paint synthetic lesions into a CT, lobe by lobe.

    Args:
        ct_zyx: float32 CT in HU (z, y, x); not modified.
        lobes_zyx: uint8 DIAG lobe labels on the same grid.
        spacing_zyx_mm: voxel spacing in mm, z y x.
        target_fractions: lesion volume / lobe volume per lobe name, in [0, 1].
        settings: the config's `demo.lesions` section.
        rng: random generator; the result is a pure function of its state.

    Returns:
        ct with lesions (float32 HU), reference (uint8 labels 0-3), achieved
        fraction per lobe, and lesion voxels per subtype name.
    """
    spacing = np.asarray(spacing_zyx_mm, dtype=float)
    lesioned_zyx = ct_zyx.astype(np.float32, copy=True)
    reference_zyx = np.zeros(lobes_zyx.shape, dtype=np.uint8)
    noise_sd = estimate_noise_sd(ct_zyx)
    LOGGER.info("estimated noise SD %.1f HU", noise_sd)

    achieved = {}
    for name in LOBE_NAMES:
        fraction = float(target_fractions.get(name, 0.0))
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"target lesion fraction of lobe {name!r} is {fraction}; expected a value in [0, 1]")
        lobe_voxels = int((lobes_zyx == LOBE_LABELS[name]).sum())
        if fraction == 0.0 or lobe_voxels == 0:
            achieved[name] = 0.0
            continue
        lesion_voxels = _paint_lobe(
            lesioned_zyx, reference_zyx, lobes_zyx, LOBE_LABELS[name], spacing, fraction, settings, noise_sd, rng
        )
        achieved[name] = lesion_voxels / lobe_voxels

    subtype_voxels = {SUBTYPES[label]: int((reference_zyx == label).sum()) for label in SUBTYPES}
    return lesioned_zyx, reference_zyx, achieved, subtype_voxels


def _paint_lobe(ct_zyx, reference_zyx, lobes_zyx, label, spacing, fraction, settings, noise_sd, rng) -> int:
    """Paint lesions into one lobe in place; return the number of lesion voxels."""
    margin = np.ceil(float(settings["edge_width_mm"]) / spacing).astype(int) + 1
    box = _bounding_box(lobes_zyx == label, margin)
    lobe = lobes_zyx[box] == label
    lung = lobes_zyx[box] > 0

    field = _lesion_field(lobe, lung, spacing, int(settings["max_foci_per_lobe"]), rng)
    values = field[lobe]
    wanted = int(round(fraction * values.size))
    wanted = min(max(wanted, 1), values.size)
    threshold = np.partition(values, values.size - wanted)[values.size - wanted]
    lesion = lobe & (field >= threshold)

    subtypes = _assign_subtypes(lesion, settings["subtype_probabilities"], rng)
    edge_width_mm = float(settings["edge_width_mm"])
    weight = _edge_weight(lesion, lobe, spacing, edge_width_mm)
    texture = _smooth_noise(lobe.shape, spacing, SHAPE_NOISE_MM, rng) * TEXTURE_HU
    white = rng.standard_normal(lobe.shape, dtype=np.float32) * noise_sd

    ggo_low, ggo_high = settings["ggo_hu"]
    solid_low, solid_high = settings["consolidation_hu"]
    ggo_target = np.float32(rng.uniform(ggo_low, ggo_high)) + texture + white
    solid_target = np.float32(rng.uniform(solid_low, solid_high)) + texture + white

    # Mixed lesions: consolidation in the core, GGO in the rim.
    solid = subtypes == CONSOLIDATION
    if (subtypes == MIXED).any():
        depth = ndimage.distance_transform_edt(lesion, sampling=spacing)
        solid |= (subtypes == MIXED) & (depth > MIXED_RIM_MM)
    # The soft edge outside a consolidation takes the consolidation's value, weighted down.
    reach = max(1, int(np.ceil(edge_width_mm / spacing.min())))
    solid_nearest = ndimage.binary_dilation(solid, iterations=reach) & ~(lesion & ~solid)

    original = ct_zyx[box]
    # GGO raises attenuation only where tissue is darker than the target, so brighter vessels stay visible.
    ggo_value = np.maximum(original, ggo_target)
    target = np.where(solid_nearest, solid_target, ggo_value)
    ct_zyx[box] = np.where(weight > 0, original + weight * (target - original), original)
    reference_zyx[box][lesion] = subtypes[lesion]
    return int(lesion.sum())


def _bounding_box(mask_zyx: np.ndarray, margin_zyx) -> tuple[slice, ...]:
    indices = np.nonzero(mask_zyx)
    return tuple(
        slice(max(0, int(axis.min()) - int(extra)), min(size, int(axis.max()) + int(extra) + 1))
        for axis, extra, size in zip(indices, margin_zyx, mask_zyx.shape)
    )


def _smooth_noise(shape, spacing, scale_mm, rng) -> np.ndarray:
    """Return smoothed white noise with unit SD (float32), correlated over about `scale_mm`.

    The noise is drawn and smoothed on a grid 3 times coarser than `scale_mm`
    and interpolated linearly to `shape`, which is much faster than smoothing
    at full resolution.
    """
    step_mm = scale_mm / 3.0
    coarse_shape = [max(2, int(np.ceil(size * space / step_mm)) + 1) for size, space in zip(shape, spacing)]
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    smooth = ndimage.gaussian_filter(noise, sigma=3.0, mode="wrap")
    factors = [size / coarse for size, coarse in zip(shape, coarse_shape)]
    smooth = ndimage.zoom(smooth, factors, order=1, grid_mode=True, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    return smooth / max(float(smooth.std()), 1e-6)


def _lesion_field(lobe, lung, spacing, max_foci, rng) -> np.ndarray:
    """Return a score per voxel; the highest-scoring voxels of the lobe become lesion.

    The score adds a few Gaussian foci centred near the pleura, smoothed noise
    for irregular borders, and a preference for the subpleural region (distance
    to the lung boundary).
    """
    to_pleura = ndimage.distance_transform_edt(lung, sampling=spacing).astype(np.float32)
    periphery = np.exp(-to_pleura / PERIPHERY_MM)

    candidates = np.flatnonzero(lobe & (to_pleura < PERIPHERY_MM))
    if candidates.size == 0:
        candidates = np.flatnonzero(lobe)
    count = int(rng.integers(1, max(1, max_foci) + 1))
    centres = np.unravel_index(rng.choice(candidates, size=count), lobe.shape)
    axes_mm = [np.arange(size, dtype=np.float32) * step for size, step in zip(lobe.shape, spacing)]
    foci = np.zeros(lobe.shape, dtype=np.float32)
    for centre in zip(*centres):
        radius_mm = float(rng.uniform(8.0, 25.0))
        squared = [((axis - axis[index]) / radius_mm) ** 2 for axis, index in zip(axes_mm, centre)]
        foci = np.maximum(foci, np.exp(-0.5 * (squared[0][:, None, None] + squared[1][None, :, None] + squared[2])))

    return foci + 0.8 * _smooth_noise(lobe.shape, spacing, SHAPE_NOISE_MM, rng) + 0.6 * periphery


def _assign_subtypes(lesion, probabilities: Mapping[str, float], rng) -> np.ndarray:
    """Give each connected lesion a subtype drawn from `probabilities`; return uint8 labels."""
    names = list(probabilities)
    weights = np.array([float(probabilities[name]) for name in names])
    unknown = [name for name in names if name not in SUBTYPE_LABELS]
    if unknown or weights.min() < 0 or not np.isclose(weights.sum(), 1.0):
        raise ValueError(
            f"demo.lesions.subtype_probabilities must map {sorted(SUBTYPE_LABELS)} to probabilities summing to 1, "
            f"found {dict(probabilities)}"
        )
    components, count = ndimage.label(lesion, structure=np.ones((3, 3, 3), dtype=bool))
    drawn = rng.choice(len(names), size=count, p=weights)
    lookup = np.zeros(count + 1, dtype=np.uint8)
    lookup[1:] = [SUBTYPE_LABELS[names[index]] for index in drawn]
    return lookup[components]


def _edge_weight(lesion, lobe, spacing, edge_width_mm) -> np.ndarray:
    """Return the lesion weight per voxel (float32, 0-1) with a soft edge about `edge_width_mm` wide.

    The binary lesion is blurred with a Gaussian whose full width at half
    maximum is `edge_width_mm`, which models partial volume at its surface.
    The weight is at least 0.5 inside the lesion and 0 outside the lobe.
    """
    sigma_mm = max(edge_width_mm, 1e-3) / 2.355
    weight = ndimage.gaussian_filter(lesion.astype(np.float32), sigma=sigma_mm / spacing, truncate=3.0)
    weight[lesion] = np.maximum(weight[lesion], 0.5)
    weight[~lobe] = 0.0
    return weight


def scores_from_fractions(fractions: Mapping[str, float], intervals: Mapping[int, tuple[float, float]]) -> dict[str, int]:
    """Return the severity score of each lobe's achieved lesion fraction."""
    return {name: fraction_to_score(float(fraction), intervals) for name, fraction in fractions.items()}


def apply_rater_errors(scores: Mapping[str, int], rate: float, top_score: int, rng: np.random.Generator) -> dict[str, int]:
    """Shift each score by one up or down with probability `rate`, kept within 0..top_score."""
    reported = {}
    for name, score in scores.items():
        if rng.random() < rate:
            score = int(np.clip(score + rng.choice([-1, 1]), 0, top_score))
        reported[name] = int(score)
    return reported


def corads_from_lesions(fractions: Mapping[str, float], subtype_voxels: Mapping[str, int]) -> int:
    """Return a CO-RADS category by a simple demo rule.

    1 without lesions; 5 when both lungs have lesions and GGO voxels are more
    than half of all lesion voxels (bilateral, GGO-dominant, typical of
    COVID-19); 4 otherwise.
    """
    lesioned = {name for name, fraction in fractions.items() if fraction > 0}
    if not lesioned:
        return 1
    bilateral = bool(lesioned & LEFT_LOBES) and bool(lesioned - LEFT_LOBES)
    total = sum(subtype_voxels.values())
    ggo_dominant = total > 0 and subtype_voxels.get("ggo", 0) > 0.5 * total
    return 5 if bilateral and ggo_dominant else 4
