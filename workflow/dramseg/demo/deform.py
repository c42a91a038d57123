"""Random smooth spatial deformations that make demo variants differ anatomically."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

AIR_HU = -1024.0


def random_deformation(
    reference: sitk.Image, max_displacement_mm: float, smoothness_mm: float, rng: np.random.Generator
) -> sitk.Transform:
    """Draw a smooth random displacement field as a cubic B-spline transform.

    Control points lie `smoothness_mm` apart over the image's physical extent
    and carry normally distributed displacements. The B-spline interpolation
    smooths that noise, and the coefficients are scaled so that the largest
    displacement, sampled on a grid of about 4 mm, is `max_displacement_mm`.
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

    largest_mm = _largest_displacement_mm(transform, reference)
    if largest_mm > 0:
        transform.SetParameters((coefficients * (max_displacement_mm / largest_mm)).tolist())
    return transform


def _largest_displacement_mm(transform: sitk.Transform, reference: sitk.Image) -> float:
    spacing_xyz_mm = [4.0, 4.0, 4.0]
    extent_xyz_mm = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    size = [max(2, int(extent / step)) for extent, step in zip(extent_xyz_mm, spacing_xyz_mm)]
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, size, reference.GetOrigin(), spacing_xyz_mm, reference.GetDirection()
    )
    vectors = sitk.GetArrayViewFromImage(field)
    return float(np.sqrt((vectors**2).sum(axis=-1)).max())


def warp_ct(ct: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Resample a CT through the transform with linear interpolation; outside is air (-1024 HU)."""
    return sitk.Resample(ct, ct, transform, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)


def warp_labels(labels: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Resample a label map through the transform with nearest-neighbour interpolation."""
    return sitk.Resample(labels, labels, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
