"""APPROXIMATE lobes: each lung cut by smooth fissure surfaces placed from its own extent.

This is not a lobe segmentation. The fissures are not detected in the image.
They are plausible surfaces placed relative to each lung's bounding box in
patient coordinates. The lobe maps of the demo cohort therefore only
approximate real lobes, for demonstration and testing.

Coordinates per lung: u runs from anterior (0) to posterior (1), v from the
lung base (0) to the apex (1), w across the lung from medial (0) to lateral (1).
The oblique fissure runs from posterior-superior (u = 1, v = OBLIQUE_TOP_V,
about the T4-T5 level) to anterior-inferior (u = OBLIQUE_BASE_U, v = 0, near the
diaphragm); the lower lobe lies behind and below it. In the right lung the
horizontal fissure (v = HORIZONTAL_V) separates the upper lobe from the middle
lobe in front of the oblique fissure.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from dramseg.anatomy import LOBE_LABELS
from dramseg.demo.lungs import LEFT_LUNG, RIGHT_LUNG

APPROXIMATION_NOTE = "APPROXIMATE lobes (planes, demo only); DIAG 1 LUL 2 LLL 3 RUL 4 RLL 5 RML"

OBLIQUE_TOP_V = 0.8
OBLIQUE_BASE_U = 0.2
HORIZONTAL_V = 0.45
# Height of the gentle bulge of each fissure across the lung, as a fraction of the lung height.
FISSURE_BULGE = 0.05


def partition_lobes(lungs_zyx: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """Cut the lungs into five approximate lobes.

    Args:
        lungs_zyx: uint8 (z, y, x), 0 background, 1 right lung, 2 left lung.
        reference: image giving the grid of `lungs_zyx` (spacing, origin, direction).

    Returns:
        uint8 (z, y, x) with DIAG labels 1 LUL, 2 LLL, 3 RUL, 4 RLL, 5 RML.

    Raises:
        ValueError: when a lung is missing or a lobe comes out empty.
    """
    lobes_zyx = np.zeros(lungs_zyx.shape, dtype=np.uint8)
    for lung_label, is_left in ((RIGHT_LUNG, False), (LEFT_LUNG, True)):
        indices = np.nonzero(lungs_zyx == lung_label)
        if indices[0].size == 0:
            raise ValueError(f"lung label {lung_label} is empty; cannot place its fissures")
        u, v, w = _lung_coordinates(indices, reference, is_left)
        oblique_v = OBLIQUE_TOP_V * (u - OBLIQUE_BASE_U) / (1.0 - OBLIQUE_BASE_U) + FISSURE_BULGE * np.sin(np.pi * w)
        lower = v < oblique_v
        if is_left:
            labels = np.where(lower, LOBE_LABELS["lll"], LOBE_LABELS["lul"])
        else:
            horizontal_v = HORIZONTAL_V + FISSURE_BULGE * np.sin(np.pi * w) * (1.0 - u)
            middle = ~lower & (v < horizontal_v)
            labels = np.where(lower, LOBE_LABELS["rll"], np.where(middle, LOBE_LABELS["rml"], LOBE_LABELS["rul"]))
        lobes_zyx[indices] = labels

    present = set(np.unique(lobes_zyx).tolist()) - {0}
    missing = [name for name, label in LOBE_LABELS.items() if label not in present]
    if missing:
        raise ValueError(f"approximate lobe partition left lobes {missing} empty; the lung masks are too small")
    return lobes_zyx


def _lung_coordinates(indices, reference: sitk.Image, is_left: bool):
    """Return u, v, w (float32 arrays in [0, 1]) of lung voxels given by (z, y, x) indices."""
    index_xyz = np.stack([indices[2], indices[1], indices[0]], axis=1).astype(np.float64)
    direction = np.array(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(reference.GetSpacing(), dtype=np.float64)
    origin = np.array(reference.GetOrigin(), dtype=np.float64)
    # LPS: x to patient-left, y to posterior, z to superior.
    points_lps = origin + (index_xyz * spacing) @ direction.T

    def normalise(values: np.ndarray) -> np.ndarray:
        low, high = np.percentile(values, [0.5, 99.5])
        return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)

    u = normalise(points_lps[:, 1])
    v = normalise(points_lps[:, 2])
    x = normalise(points_lps[:, 0])
    # Medial is towards the body's midline: smaller x in the left lung, larger x in the right lung.
    w = x if is_left else 1.0 - x
    return u, v, w
