"""Stage `resample`: crop the CT to the lungs and resample CT and lobe map to isotropic voxels.

The crop (bounding box of all lobe voxels plus a margin) is taken on the
original grid before resampling, so a whole-body scan never has to be
resampled in full. box.json records where the crop sits in the original CT,
so later stages can put their maps back onto the original grid.
"""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np
import SimpleITK as sitk

from dramseg import io, settings
from dramseg.errors import input_error
from dramseg.readers import AIR_HU, read_ct

log = logging.getLogger(__name__)

INTERPOLATORS: dict[str, int] = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
}

# Two grids are the same when they agree within these tolerances.
SPACING_TOLERANCE_RELATIVE = 1e-3
ORIGIN_TOLERANCE_MM = 1e-2
DIRECTION_TOLERANCE = 1e-4


def grid_differences(image: sitk.Image, reference: sitk.Image) -> list[str]:
    """List how the grid of `image` differs from that of `reference`; empty when they match.

    Sizes must be equal; spacing agrees within SPACING_TOLERANCE_RELATIVE,
    origin within ORIGIN_TOLERANCE_MM and direction cosines within DIRECTION_TOLERANCE.
    """
    differences = []
    if image.GetSize() != reference.GetSize():
        differences.append(f"size {image.GetSize()} vs {reference.GetSize()}")
    spacing, reference_spacing = np.array(image.GetSpacing()), np.array(reference.GetSpacing())
    if np.any(np.abs(spacing - reference_spacing) > SPACING_TOLERANCE_RELATIVE * reference_spacing):
        differences.append(f"spacing {_rounded(spacing)} vs {_rounded(reference_spacing)} mm")
    origin, reference_origin = np.array(image.GetOrigin()), np.array(reference.GetOrigin())
    if np.any(np.abs(origin - reference_origin) > ORIGIN_TOLERANCE_MM):
        differences.append(f"origin {_rounded(origin)} vs {_rounded(reference_origin)} mm")
    direction, reference_direction = np.array(image.GetDirection()), np.array(reference.GetDirection())
    if np.any(np.abs(direction - reference_direction) > DIRECTION_TOLERANCE):
        differences.append(f"direction {_rounded(direction)} vs {_rounded(reference_direction)}")
    return differences


def resample_to_reference(
    image: sitk.Image, reference: sitk.Image, interpolator: str = "nearest", default_value: float = 0.0
) -> sitk.Image:
    """Resample `image` onto the grid of `reference` (identity transform, physical coordinates).

    Args:
        image: image to resample; its pixel type is kept.
        reference: image whose size, spacing, origin and direction are used.
        interpolator: "nearest" (label maps), "linear" or "bspline".
        default_value: value of output voxels that fall outside `image`.
    """
    return sitk.Resample(
        image,
        reference,
        sitk.Transform(),
        _interpolator(interpolator),
        float(default_value),
        image.GetPixelID(),
    )


def lung_box(lobes_zyx: np.ndarray, spacing_xyz_mm, margin_mm: float) -> tuple[list[int], list[int]]:
    """Return start index and size (x, y, z) of the lobe voxels' bounding box plus a margin.

    Args:
        lobes_zyx: label map (z, y, x); any value above 0 is lung.
        spacing_xyz_mm: voxel spacing (x, y, z) in mm.
        margin_mm: margin added on every side, in mm; the box is clipped to the image.

    Raises:
        ValueError: the map has no lobe voxel.
    """
    lung_zyx = lobes_zyx > 0
    # Indices along z, y and x where at least one lung voxel lies.
    present_zyx = [np.flatnonzero(np.any(lung_zyx, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(indices.size == 0 for indices in present_zyx):
        raise ValueError("the lobe map has no lobe voxel")
    size_zyx = lobes_zyx.shape
    start_xyz, size_xyz = [], []
    for axis_xyz in range(3):
        axis_zyx = 2 - axis_xyz
        margin_voxels = int(math.ceil(margin_mm / spacing_xyz_mm[axis_xyz]))
        low = max(int(present_zyx[axis_zyx][0]) - margin_voxels, 0)
        high = min(int(present_zyx[axis_zyx][-1]) + margin_voxels + 1, size_zyx[axis_zyx])
        start_xyz.append(low)
        size_xyz.append(high - low)
    return start_xyz, size_xyz


def isotropic_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Return an empty image (the reference grid) covering `image` with isotropic voxels.

    The new grid keeps the direction, starts at the same outer voxel edge and
    has ceil(extent / spacing_mm) voxels per axis, so it covers the whole
    input and reaches at most one new voxel beyond its far edge.
    """
    spacing_xyz_mm = np.array(image.GetSpacing())
    extent_xyz_mm = spacing_xyz_mm * np.array(image.GetSize())
    # The small tolerance keeps an extent that is an exact multiple from gaining a voxel by rounding.
    size_xyz = [max(1, int(math.ceil(extent / spacing_mm - 1e-6))) for extent in extent_xyz_mm]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    # Shift the first voxel centre from half an old voxel to half a new voxel inside the lower edge.
    shift_xyz_mm = (spacing_mm - spacing_xyz_mm) / 2.0
    origin = np.array(image.GetOrigin()) + direction @ shift_xyz_mm

    grid = sitk.Image(size_xyz, sitk.sitkUInt8)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(image.GetDirection())
    return grid


def resample_scan(
    ct: sitk.Image, lobes: sitk.Image, spacing_mm: float, interpolator: str, margin_mm: float
) -> tuple[sitk.Image, sitk.Image, dict]:
    """Crop CT and lobe map to the lungs and resample both to isotropic voxels.

    Args:
        ct: float32 CT in HU.
        lobes: uint8 internal lobe map on the CT's grid.
        spacing_mm: isotropic output spacing, mm.
        interpolator: "linear" or "bspline" for the CT; lobes use nearest neighbour.
        margin_mm: margin around the lung bounding box, mm.

    Returns:
        (CT float32 HU, lobes uint8, box dictionary for box.json). CT voxels
        outside the original image are -1024 HU, lobe voxels there are 0.
    """
    start_xyz, size_xyz = lung_box(sitk.GetArrayViewFromImage(lobes), ct.GetSpacing(), margin_mm)
    ct_crop = sitk.RegionOfInterest(ct, size_xyz, start_xyz)
    lobes_crop = sitk.RegionOfInterest(lobes, size_xyz, start_xyz)
    log.info("cropped the lungs: start %s, size %s voxels of %s", start_xyz, size_xyz, list(ct.GetSize()))

    grid = isotropic_grid(ct_crop, spacing_mm)
    ct_resampled = sitk.Cast(resample_to_reference(ct_crop, grid, interpolator, AIR_HU), sitk.sitkFloat32)
    lobes_resampled = sitk.Cast(resample_to_reference(lobes_crop, grid, "nearest", 0), sitk.sitkUInt8)
    log.info("resampled to %s voxels of %g mm (%s interpolation)", list(grid.GetSize()), spacing_mm, interpolator)

    box = {
        "start_index_xyz": start_xyz,
        "size_xyz": size_xyz,
        "spacing_mm": list(grid.GetSpacing()),
        "origin_mm": list(grid.GetOrigin()),
        "direction": list(grid.GetDirection()),
        "resampled_size_xyz": list(grid.GetSize()),
        "original_size_xyz": list(ct.GetSize()),
        "original_spacing_mm": list(ct.GetSpacing()),
        "original_origin_mm": list(ct.GetOrigin()),
        "original_direction": list(ct.GetDirection()),
    }
    return ct_resampled, lobes_resampled, box


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", required=True, help="results/scans/{scan}/record.json")
    parser.add_argument("--lobes", required=True, help="internal lobe map on the CT grid (results/lobes/{scan}/lobes.nii.gz)")
    parser.add_argument("--out-ct", required=True, help="resampled CT, float32 HU")
    parser.add_argument("--out-lobes", required=True, help="resampled lobe map, uint8")
    parser.add_argument("--out-box", required=True, help="box.json with the crop and the resampled grid")
    settings.add_settings_argument(parser)
    arguments = parser.parse_args(argv)
    settings.configure_logging()

    record = io.read_json(arguments.record)
    scan_id = record["scan_id"]
    resample_settings = arguments.settings["resample"]
    series_uid = record.get("dicom_series") or arguments.settings.get("cohort", {}).get("dicom_series", {}).get(scan_id)

    log.info("scan %s: reading CT %s", scan_id, record["ct"])
    ct = read_ct(
        record["ct"],
        scan_id,
        series_uid=series_uid,
        rescale=resample_settings.get("rescale"),
        max_air_percentile_hu=resample_settings["max_air_percentile_hu"],
    )
    lobes = sitk.ReadImage(arguments.lobes)
    differences = grid_differences(lobes, ct)
    if differences:
        raise input_error(
            scan_id,
            arguments.lobes,
            "the lobe map is not on the CT grid (" + "; ".join(differences) + ")",
            "Rerun the lobes stage for this scan (it writes the lobe map on the CT grid)",
        )
    lobes.CopyInformation(ct)

    ct_resampled, lobes_resampled, box = resample_scan(
        ct, sitk.Cast(lobes, sitk.sitkUInt8), resample_settings["spacing_mm"], resample_settings["interpolator"], resample_settings["lung_margin_mm"]
    )
    box["scan_id"] = scan_id
    io.write_image(ct_resampled, arguments.out_ct)
    io.write_image(lobes_resampled, arguments.out_lobes)
    io.write_json(box, arguments.out_box)
    log.info("scan %s: wrote %s, %s, %s", scan_id, arguments.out_ct, arguments.out_lobes, arguments.out_box)


def _interpolator(name) -> int:
    if not isinstance(name, str):
        return name
    try:
        return INTERPOLATORS[name]
    except KeyError:
        raise ValueError(f"unknown interpolator {name!r}; expected one of {sorted(INTERPOLATORS)}") from None


def _rounded(values) -> list[float]:
    return [round(float(value), 4) for value in values]


if __name__ == "__main__":
    main()
