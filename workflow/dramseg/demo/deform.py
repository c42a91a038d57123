"""Random smooth spatial deformations that make demo variants differ anatomically."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

AIR_HU = -1024.0
# Spacing of the grid on which the displacement field is stored, mm.
FIELD_SPACING_MM = 4.0


def random_deformation(
    reference: sitk.Image, max_displacement_mm: float, smoothness_mm: float, rng: np.random.Generator
) -> sitk.Transform:
    """Draw a smooth random displacement field, returned as a displacement-field transform.

    Control points of a cubic B-spline lie `smoothness_mm` apart over the
    image's physical extent and carry normally distributed displacements; the
    B-spline smooths that noise. The field is sampled on a 4 mm grid and
    scaled so that its largest displacement is `max_displacement_mm`.
    """
    if max_displacement_mm < 0 or smoothness_mm <= 0:
        raise ValueError(
            f"deformation needs max_displacement_mm >= 0 and smoothness_mm > 0, "
            f"found {max_displacement_mm} and {smoothness_mm}"
        )
    extent_xyz_mm = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    mesh_size = [max(1, int(round(extent / smoothness_mm))) for extent in extent_xyz_mm]
    transform = sitk.BSplineTransformInitializer(reference, mesh_size, order=3)
    coefficients = rng.standard_normal(len(transform.GetParameters()))
    transform.SetParameters(coefficients.tolist())

    # Sampling the B-spline once on a coarse grid makes resampling several times faster than
    # evaluating the B-spline at every voxel, and the field is smooth at this scale.
    field = _sample_field(transform, reference, FIELD_SPACING_MM)
    vectors_zyx = sitk.GetArrayFromImage(field)
    largest_mm = float(np.sqrt((vectors_zyx**2).sum(axis=-1)).max())
    if largest_mm > 0:
        vectors_zyx *= max_displacement_mm / largest_mm
    scaled = sitk.GetImageFromArray(vectors_zyx, isVector=True)
    scaled.CopyInformation(field)
    return sitk.DisplacementFieldTransform(scaled)


def _sample_field(transform: sitk.Transform, reference: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Sample a transform's displacements (float64 vectors, mm) on a coarse grid covering the reference."""
    spacing_xyz_mm = [spacing_mm] * 3
    extent_xyz_mm = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    size = [max(2, int(np.ceil(extent / spacing_mm)) + 2) for extent in extent_xyz_mm]
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    # Start one coarse step before the reference's first voxel so that the field covers it with linear interpolation.
    origin = np.array(reference.GetOrigin()) - direction @ np.array(spacing_xyz_mm)
    return sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, size, origin.tolist(), spacing_xyz_mm, reference.GetDirection()
    )


def warp_ct(ct: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Resample a CT through the transform with linear interpolation.

    Points mapped outside the image take the nearest edge voxel's value, so no
    band of artificial air appears at the borders.
    """
    return sitk.Resample(ct, ct, transform, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32, True)


def warp_labels(labels: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Resample a label map through the transform with nearest-neighbour interpolation."""
    return sitk.Resample(labels, labels, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
