"""Segmentation and severity-score metrics (Xie et al., Eqs. 6-10, lobe accuracy and weighted kappa).

Masks are boolean numpy arrays in z, y, x order on one grid, with the voxel
spacing given as `spacing_xyz_mm` (x, y, z, as SimpleITK reports it). X is the
prediction and Y the reference. Voxel metrics return fractions in [0, 1], and
the tables multiply them by 100. A metric that is undefined because an empty
mask is in a denominator returns NaN, unless its docstring states another
convention. docs/metrics.md lists every case.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from skimage.measure import marching_cubes, mesh_surface_area

from dramseg import anatomy
from dramseg.intervals import fraction_to_score

SURFACE_METHODS = ("mesh", "faces")


def _check_same_shape(**masks: np.ndarray) -> None:
    shapes = {name: np.shape(mask) for name, mask in masks.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"masks must have the same shape, found {shapes}")


def _voxel_volume_mm3(spacing_xyz_mm: Sequence[float]) -> float:
    if len(spacing_xyz_mm) != 3 or min(spacing_xyz_mm) <= 0:
        raise ValueError(f"spacing_xyz_mm must be three positive values in mm, found {list(spacing_xyz_mm)}")
    return float(np.prod(spacing_xyz_mm))


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Return the Dice similarity coefficient 2|X ∩ Y| / (|X| + |Y|) (Eq. 6).

    Two empty masks agree perfectly and give 1.0. An empty mask against a
    non-empty one gives 0.0.
    """
    _check_same_shape(prediction=prediction, reference=reference)
    total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(reference))
    if total == 0:
        return 1.0
    overlap = int(np.count_nonzero(prediction & reference))
    return 2.0 * overlap / total


def absolute_percentage_difference(prediction: np.ndarray, reference: np.ndarray, lung: np.ndarray) -> float:
    """Return |V(X) - V(Y)| / V(lung) as a fraction (Eq. 7).

    All three masks share one grid, so voxel counts stand for volumes. Two
    empty lesion masks give 0.0. Raises ValueError when the lung mask is empty.
    """
    _check_same_shape(prediction=prediction, reference=reference, lung=lung)
    lung_voxels = int(np.count_nonzero(lung))
    if lung_voxels == 0:
        raise ValueError("the lung mask is empty, so the absolute percentage difference is undefined")
    difference = abs(int(np.count_nonzero(prediction)) - int(np.count_nonzero(reference)))
    return difference / lung_voxels


def surface_area_mm2(mask: np.ndarray, spacing_xyz_mm: Sequence[float], method: str = "mesh") -> float:
    """Return the surface area of a boolean z, y, x mask in mm².

    method "mesh": the iso-surface at 0.5 of the mask, zero-padded by one voxel
    so that objects touching the array border are closed, from
    skimage.measure.marching_cubes with the voxel spacing, measured by
    mesh_surface_area. Planar faces come out 2-3 % small (edges and corners
    are cut). Voxelised spheres of radius 5-20 voxels come out 7-9 % large on
    an isotropic grid, 9-12 % with slices twice the in-plane spacing and
    13-19 % at about three times (staircase). A single voxel of 1 mm gives an
    octahedron of 1.73 mm².
    method "faces": the total area of voxel faces between the mask and the
    background, which overestimates smooth surfaces by up to 50 %.
    An empty mask has area 0.0.
    """
    if method not in SURFACE_METHODS:
        raise ValueError(f"surface area method {method!r} must be one of {SURFACE_METHODS}")
    spacing_zyx_mm = tuple(float(value) for value in reversed(spacing_xyz_mm))
    _voxel_volume_mm3(spacing_xyz_mm)
    if not np.any(mask):
        return 0.0

    # Crop to the bounding box plus one voxel of zero padding on every side.
    nonzero = np.nonzero(mask)
    box = tuple(slice(int(index.min()), int(index.max()) + 1) for index in nonzero)
    padded = np.pad(mask[box].astype(np.uint8), 1)

    if method == "faces":
        return _voxel_face_area_mm2(padded, spacing_zyx_mm)
    vertices, faces, _, _ = marching_cubes(padded, level=0.5, spacing=spacing_zyx_mm)
    return float(mesh_surface_area(vertices, faces))


def _voxel_face_area_mm2(padded: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> float:
    # A face normal to axis a has the area of the product of the other two spacings.
    area = 0.0
    for axis in range(3):
        exposed_faces = int(np.count_nonzero(np.diff(padded, axis=axis)))
        other_spacings = [spacing_zyx_mm[other] for other in range(3) if other != axis]
        area += exposed_faces * other_spacings[0] * other_spacings[1]
    return area


def surface_volume_ratio_difference(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_xyz_mm: Sequence[float],
    method: str = "mesh",
) -> float:
    """Return |S(X)/V(X) - S(Y)/V(Y)| in 1/mm (Eq. 8), S in mm² and V in mm³.

    V is the voxel count times the voxel volume and S comes from
    surface_area_mm2 with `method`. Two empty masks give 0.0. Exactly one
    empty mask gives NaN, because its surface-to-volume ratio is undefined.
    """
    _check_same_shape(prediction=prediction, reference=reference)
    voxel_volume = _voxel_volume_mm3(spacing_xyz_mm)
    prediction_voxels = int(np.count_nonzero(prediction))
    reference_voxels = int(np.count_nonzero(reference))
    if prediction_voxels == 0 and reference_voxels == 0:
        return 0.0
    if prediction_voxels == 0 or reference_voxels == 0:
        return float("nan")
    prediction_ratio = surface_area_mm2(prediction, spacing_xyz_mm, method) / (prediction_voxels * voxel_volume)
    reference_ratio = surface_area_mm2(reference, spacing_xyz_mm, method) / (reference_voxels * voxel_volume)
    return abs(prediction_ratio - reference_ratio)


def false_discovery_rate(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Return 1 - V(X ∩ Y) / V(X) (Eq. 9).

    An empty prediction makes no discoveries and so no false ones: 0.0 (the
    usual convention for the false discovery rate), whatever the reference.
    """
    _check_same_shape(prediction=prediction, reference=reference)
    prediction_voxels = int(np.count_nonzero(prediction))
    if prediction_voxels == 0:
        return 0.0
    return 1.0 - int(np.count_nonzero(prediction & reference)) / prediction_voxels


def true_positive_rate(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Return V(X ∩ Y) / V(Y) (Eq. 10), or NaN (undefined) when the reference is empty."""
    _check_same_shape(prediction=prediction, reference=reference)
    reference_voxels = int(np.count_nonzero(reference))
    if reference_voxels == 0:
        return float("nan")
    return int(np.count_nonzero(prediction & reference)) / reference_voxels


def subtype_true_positive_rates(prediction: np.ndarray, reference_labels: np.ndarray) -> dict[str, float]:
    """Return the true positive rate within each reference lesion subtype.

    reference_labels: integer z, y, x array with 0 background, 1 ground-glass
    opacity, 2 consolidation, 3 mixed (anatomy.SUBTYPES). Returns
    {"ggo": ..., "consolidation": ..., "mixed": ...}: the fraction of that
    subtype's voxels inside the prediction, NaN for a subtype with no voxels.
    """
    _check_same_shape(prediction=prediction, reference_labels=reference_labels)
    return {
        name: true_positive_rate(prediction, reference_labels == label) for label, name in anatomy.SUBTYPES.items()
    }


def lobe_fractions(
    prediction: np.ndarray, lobes: np.ndarray, spacing_xyz_mm: Sequence[float]
) -> dict[str, dict[str, float]]:
    """Measure the lesion volume of each lobe present in the lobe map.

    prediction: boolean z, y, x lesion mask; lobes: integer z, y, x map with
    the internal labels (anatomy.LOBE_LABELS). Returns {lobe: {"volume_ml",
    "lesion_ml", "lesion_fraction"}} for each lobe with at least one voxel, in
    anatomy.LOBE_NAMES order; lesion voxels outside every lobe are not counted.
    """
    _check_same_shape(prediction=prediction, lobes=lobes)
    voxel_ml = _voxel_volume_mm3(spacing_xyz_mm) / 1000.0
    lobe_voxels = np.bincount(lobes.ravel().astype(np.int64), minlength=max(anatomy.LOBE_LABELS.values()) + 1)
    lesion_voxels = np.bincount(
        lobes[prediction].astype(np.int64), minlength=max(anatomy.LOBE_LABELS.values()) + 1
    )
    measurements = {}
    for name in anatomy.LOBE_NAMES:
        label = anatomy.LOBE_LABELS[name]
        if lobe_voxels[label] == 0:
            continue
        measurements[name] = {
            "volume_ml": float(lobe_voxels[label]) * voxel_ml,
            "lesion_ml": float(lesion_voxels[label]) * voxel_ml,
            "lesion_fraction": float(lesion_voxels[label]) / float(lobe_voxels[label]),
        }
    return measurements


def lobe_scores(
    prediction: np.ndarray,
    lobes: np.ndarray,
    spacing_xyz_mm: Sequence[float],
    intervals: Mapping[int, tuple[float, float]],
) -> dict[str, tuple[float, int]]:
    """Return {lobe: (lesion fraction, severity score)} for each lobe present in the lobe map.

    The fraction is lesion volume over lobe volume (lobe_fractions); the score
    comes from intervals.fraction_to_score with the table from
    intervals.parse_score_intervals.
    """
    measurements = lobe_fractions(prediction, lobes, spacing_xyz_mm)
    return {
        name: (values["lesion_fraction"], fraction_to_score(values["lesion_fraction"], intervals))
        for name, values in measurements.items()
    }


def _score_arrays(reference_scores, predicted_scores) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference_scores, dtype=np.int64).ravel()
    predicted = np.asarray(predicted_scores, dtype=np.int64).ravel()
    if reference.shape != predicted.shape:
        raise ValueError(
            f"reference and predicted scores must have the same length, found {reference.size} and {predicted.size}"
        )
    return reference, predicted


def severity_accuracy(reference_scores: Sequence[int], predicted_scores: Sequence[int]) -> float:
    """Return the fraction of lobes whose predicted score equals the reference, or NaN without lobes."""
    reference, predicted = _score_arrays(reference_scores, predicted_scores)
    if reference.size == 0:
        return float("nan")
    return float(np.mean(reference == predicted))


def linear_weighted_kappa(
    reference_scores: Sequence[int],
    predicted_scores: Sequence[int],
    categories: Sequence[int] = range(6),
) -> float:
    """Return Cohen's kappa with linear disagreement weights |i - j| / (k - 1).

    kappa = 1 - sum(w * O) / sum(w * E), where O is the k x k table of observed
    proportions and E the outer product of its row and column marginals.
    Returns NaN when there are no pairs or when sum(w * E) is 0 (both raters
    use one and the same category for every lobe). Raises ValueError for a
    score that is not in `categories`.
    """
    reference, predicted = _score_arrays(reference_scores, predicted_scores)
    categories = list(categories)
    if len(categories) < 2:
        raise ValueError(f"weighted kappa needs at least two categories, found {categories}")
    index = {category: position for position, category in enumerate(categories)}
    unknown = sorted((set(reference.tolist()) | set(predicted.tolist())) - set(categories))
    if unknown:
        raise ValueError(f"scores {unknown} are not among the kappa categories {categories}")
    if reference.size == 0:
        return float("nan")

    size = len(categories)
    observed = np.zeros((size, size))
    np.add.at(observed, ([index[value] for value in reference], [index[value] for value in predicted]), 1.0)
    observed /= reference.size
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    positions = np.arange(size)
    weights = np.abs(positions[:, None] - positions[None, :]) / (size - 1)

    expected_disagreement = float(np.sum(weights * expected))
    if expected_disagreement == 0.0:
        return float("nan")
    return 1.0 - float(np.sum(weights * observed)) / expected_disagreement


def bootstrap_kappa_interval(
    reference_scores: Sequence[int],
    predicted_scores: Sequence[int],
    samples: int,
    confidence: float,
    seed: int,
    categories: Sequence[int] = range(6),
) -> tuple[float, float]:
    """Return a percentile bootstrap interval (low, high) for the linear weighted kappa.

    Each of `samples` replicates draws as many lobes as there are, with
    replacement, from the (reference, predicted) pairs and computes
    linear_weighted_kappa. Replicates with an undefined kappa are dropped.
    The bounds are the (1 - confidence) / 2 and (1 + confidence) / 2
    quantiles of the rest. The same seed gives the same interval. Returns
    (NaN, NaN) when no replicate is defined.
    """
    reference, predicted = _score_arrays(reference_scores, predicted_scores)
    if samples < 1:
        raise ValueError(f"bootstrap samples must be at least 1, found {samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), found {confidence}")
    if reference.size == 0:
        return float("nan"), float("nan")

    generator = np.random.default_rng(seed)
    kappas = np.empty(samples)
    for sample in range(samples):
        drawn = generator.integers(0, reference.size, size=reference.size)
        kappas[sample] = linear_weighted_kappa(reference[drawn], predicted[drawn], categories)
    kappas = kappas[np.isfinite(kappas)]
    if kappas.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(kappas, [tail, 1.0 - tail])
    return float(low), float(high)
