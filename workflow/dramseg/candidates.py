"""Stage `candidates`: candidate lesion voxels per lobe and the fraction p* of each lobe they fill.

A candidate is a voxel of a lobe whose intensity is above that lobe's Otsu
threshold (high attenuation) and which is not a vessel. Vessels are voxels of
the lungs whose multi-scale Frangi vesselness exceeds `vessel_threshold`.
p* = candidate voxels / lobe voxels narrows the severity-score interval of the
lobe in the `chunks` stage.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from skimage.filters import threshold_otsu

from dramseg import io, settings, vessels
from dramseg.anatomy import LOBE_LABELS, LOBE_NAMES
from dramseg.errors import input_error

LOGGER = logging.getLogger(__name__)

TABLE_COLUMNS = ("lobe", "label", "voxels", "volume_ml", "otsu_hu", "candidate_voxels", "vessel_voxels", "p_star")
# Tolerances of the grid comparison between the CT and the lobe map.
SPACING_TOLERANCE_MM = 1e-4
ORIGIN_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-5


@dataclass(frozen=True)
class CandidateSettings:
    """The `candidates` config section."""

    vessel_scales_mm: tuple[float, ...]
    frangi_alpha: float
    frangi_beta: float
    frangi_gamma: float
    vessel_threshold: float
    otsu_bins: int

    @classmethod
    def from_section(cls, section: dict) -> CandidateSettings:
        """Build the settings from the config section; raise ValueError naming a missing or invalid key."""
        keys = ("vessel_scales_mm", "frangi_alpha", "frangi_beta", "frangi_gamma", "vessel_threshold", "otsu_bins")
        missing = [key for key in keys if key not in section]
        if missing:
            raise ValueError(f"config section 'candidates' is missing the keys {missing}")
        values = cls(
            vessel_scales_mm=tuple(float(scale) for scale in section["vessel_scales_mm"]),
            frangi_alpha=float(section["frangi_alpha"]),
            frangi_beta=float(section["frangi_beta"]),
            frangi_gamma=float(section["frangi_gamma"]),
            vessel_threshold=float(section["vessel_threshold"]),
            otsu_bins=int(section["otsu_bins"]),
        )
        if not values.vessel_scales_mm or min(values.vessel_scales_mm) <= 0:
            raise ValueError(f"candidates.vessel_scales_mm must be positive mm values, found {section['vessel_scales_mm']}")
        if min(values.frangi_alpha, values.frangi_beta, values.frangi_gamma) <= 0:
            raise ValueError("candidates.frangi_alpha, frangi_beta and frangi_gamma must be positive")
        if not 0 <= values.vessel_threshold < 1:
            raise ValueError(f"candidates.vessel_threshold must lie in [0, 1), found {values.vessel_threshold}")
        if values.otsu_bins < 2:
            raise ValueError(f"candidates.otsu_bins must be at least 2, found {values.otsu_bins}")
        return values


def describe_grid(image: sitk.Image) -> str:
    """Return the size, spacing, origin and direction of an image as one line."""
    spacing = ", ".join(f"{value:.4f}" for value in image.GetSpacing())
    origin = ", ".join(f"{value:.3f}" for value in image.GetOrigin())
    direction = ", ".join(f"{value:.4f}" for value in image.GetDirection())
    return f"size {image.GetSize()}, spacing ({spacing}) mm, origin ({origin}) mm, direction ({direction})"


def check_same_grid(ct: sitk.Image, lobes: sitk.Image, scan_id: str, lobes_path) -> None:
    """Raise PipelineInputError when the lobe map is not on the CT's voxel grid."""
    same = (
        ct.GetSize() == lobes.GetSize()
        and np.allclose(ct.GetSpacing(), lobes.GetSpacing(), rtol=0, atol=SPACING_TOLERANCE_MM)
        and np.allclose(ct.GetOrigin(), lobes.GetOrigin(), rtol=0, atol=ORIGIN_TOLERANCE_MM)
        and np.allclose(ct.GetDirection(), lobes.GetDirection(), rtol=0, atol=DIRECTION_TOLERANCE)
    )
    if not same:
        raise input_error(
            scan_id,
            lobes_path,
            f"the lobe map is not on the CT grid: CT has {describe_grid(ct)}; lobe map has {describe_grid(lobes)}",
            "Pass the lobe map written by the resample stage for the same scan",
        )


def check_lobe_labels(lobes_zyx: np.ndarray, scan_id: str, lobes_path) -> None:
    """Raise PipelineInputError when the lobe map contains labels outside 0..5 or no lobe at all."""
    if not np.issubdtype(lobes_zyx.dtype, np.integer):
        fractional = lobes_zyx[lobes_zyx != np.round(lobes_zyx)]
        if fractional.size:
            raise input_error(
                scan_id,
                lobes_path,
                f"the lobe map contains {fractional.size} voxels with non-integer labels such as {fractional[0]}",
                "Pass an integer label map; resample lobe maps with nearest-neighbour interpolation",
            )
    labels, counts = np.unique(lobes_zyx, return_counts=True)
    allowed = {0, *LOBE_LABELS.values()}
    unexpected = {int(label): int(count) for label, count in zip(labels, counts) if int(label) not in allowed}
    if unexpected:
        raise input_error(
            scan_id,
            lobes_path,
            f"the lobe map contains labels outside 0..5 (label: voxel count) {unexpected}",
            "Pass the lobe map written by the resample stage, whose labels are the internal order 1 LUL, "
            "2 LLL, 3 RUL, 4 RLL, 5 RML",
        )
    if not np.any(lobes_zyx):
        raise input_error(scan_id, lobes_path, "the lobe map contains no lobe voxels (all labels are 0)", "Check the lobe map of the lobes stage for this scan")


def lobe_otsu_threshold(values_hu: np.ndarray, bins: int) -> float:
    """Return the Otsu threshold (HU) of a lobe's intensities; a constant lobe returns its value."""
    if values_hu.min() == values_hu.max():
        return float(values_hu.min())
    return float(threshold_otsu(values_hu, nbins=bins))


def find_candidates(
    ct_zyx: np.ndarray,
    lobes_zyx: np.ndarray,
    spacing_xyz_mm,
    config: CandidateSettings,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Find vessels and candidate lesion voxels in each lobe.

    Args:
        ct_zyx: CT in HU, shape (z, y, x).
        lobes_zyx: lobe map on the same grid, internal labels 1..5 and 0 outside.
        spacing_xyz_mm: voxel spacing in mm, x, y, z order.
        config: the `candidates` settings.
        threads: worker threads of the vessel filter.

    Returns:
        (candidates_zyx, vessels_zyx, table): uint8 0/1 masks of the CT's shape
        (vessels only inside the lungs, candidates only inside lobes) and one
        table row per lobe present, with the columns of TABLE_COLUMNS. Absent
        lobes have no row.
    """
    lungs_zyx = lobes_zyx > 0
    response = vessels.vesselness(
        ct_zyx,
        spacing_xyz_mm,
        config.vessel_scales_mm,
        config.frangi_alpha,
        config.frangi_beta,
        config.frangi_gamma,
        mask_zyx=lungs_zyx,
        threads=threads,
    )
    vessels_zyx = (response > config.vessel_threshold) & lungs_zyx
    del response

    voxel_ml = float(np.prod(spacing_xyz_mm)) / 1000.0
    candidates_zyx = np.zeros(ct_zyx.shape, np.uint8)
    rows = []
    for name in LOBE_NAMES:
        label = LOBE_LABELS[name]
        lobe_zyx = lobes_zyx == label
        voxels = int(np.count_nonzero(lobe_zyx))
        if voxels == 0:
            LOGGER.warning("lobe %s (label %d) is absent from the lobe map; skipping it", name, label)
            continue
        otsu_hu = lobe_otsu_threshold(ct_zyx[lobe_zyx], config.otsu_bins)
        lobe_candidates = lobe_zyx & (ct_zyx > otsu_hu) & ~vessels_zyx
        candidate_voxels = int(np.count_nonzero(lobe_candidates))
        candidates_zyx[lobe_candidates] = 1
        rows.append(
            {
                "lobe": name,
                "label": label,
                "voxels": voxels,
                "volume_ml": voxels * voxel_ml,
                "otsu_hu": otsu_hu,
                "candidate_voxels": candidate_voxels,
                "vessel_voxels": int(np.count_nonzero(vessels_zyx & lobe_zyx)),
                "p_star": candidate_voxels / voxels,
            }
        )
        LOGGER.info("lobe %s: %d voxels, Otsu %.1f HU, p* %.4f", name, voxels, otsu_hu, candidate_voxels / voxels)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return candidates_zyx, vessels_zyx.astype(np.uint8), table


def _mask_image(mask_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask_zyx.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dramseg.candidates",
        description="Find vessels and candidate lesion voxels per lobe of a resampled CT.",
    )
    parser.add_argument("--ct", required=True, type=Path, help="resampled CT in HU (NIfTI)")
    parser.add_argument("--lobes", required=True, type=Path, help="lobe map on the CT grid, internal labels 1..5")
    parser.add_argument("--out-candidates", required=True, type=Path, help="output candidate mask (uint8 0/1)")
    parser.add_argument("--out-vessels", required=True, type=Path, help="output vessel mask (uint8 0/1)")
    parser.add_argument("--out-table", required=True, type=Path, help="output per-lobe table (CSV)")
    parser.add_argument("--scan-id", required=True, help="scan id, used in messages")
    parser.add_argument("--threads", type=int, default=1, help="worker threads of the vessel filter")
    settings.add_settings_argument(parser)
    arguments = parser.parse_args(argv)
    settings.configure_logging()

    if "candidates" not in arguments.settings:
        raise SystemExit("--settings must contain the 'candidates' config section")
    config = CandidateSettings.from_section(arguments.settings["candidates"])

    LOGGER.info("scan %s: reading %s and %s", arguments.scan_id, arguments.ct, arguments.lobes)
    ct = sitk.ReadImage(str(arguments.ct), sitk.sitkFloat32)
    lobes = sitk.ReadImage(str(arguments.lobes))
    check_same_grid(ct, lobes, arguments.scan_id, arguments.lobes)
    lobes_zyx = sitk.GetArrayFromImage(lobes)
    check_lobe_labels(lobes_zyx, arguments.scan_id, arguments.lobes)
    ct_zyx = sitk.GetArrayFromImage(ct)

    candidates_zyx, vessels_zyx, table = find_candidates(
        ct_zyx, lobes_zyx.astype(np.uint8), ct.GetSpacing(), config, threads=arguments.threads
    )
    io.write_image(_mask_image(candidates_zyx, ct), arguments.out_candidates)
    io.write_image(_mask_image(vessels_zyx, ct), arguments.out_vessels)
    io.write_csv(table, arguments.out_table)
    LOGGER.info("scan %s: wrote %d lobe rows, %d vessel voxels", arguments.scan_id, len(table), int(vessels_zyx.sum()))


if __name__ == "__main__":
    main()
