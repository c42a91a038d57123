"""Stage `lobes`: find each scan's lobe map, convert it to the internal labels and the CT grid, check it.

The internal labels are 1 LUL, 2 LLL, 3 RUL, 4 RLL, 5 RML (anatomy.LOBE_LABELS).
Labels that are not lobes in the scan's convention (for example the organs of
a TotalSegmentator map) are dropped and counted. A map on another grid than
the CT is resampled onto the CT grid with nearest neighbour after checking
that the two overlap physically. The position check compares lobe centroids
in ITK's physical LPS space (+x patient left, +y posterior, +z superior) and
catches swapped labels, such as a lungmask map read with the DIAG convention.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dramseg import io, settings
from dramseg.anatomy import CONVENTIONS, LEFT_LOBES, LOBE_LABELS, LOBE_NAMES, LOBE_TITLES, RIGHT_LOBES
from dramseg.errors import input_error
from dramseg.readers import read_ct, read_label_map
from dramseg.resample import grid_differences, resample_to_reference

log = logging.getLogger(__name__)


def lobe_map_path(record: dict, cohort: dict) -> Path | None:
    """Return where the scan's lobe map should be: record["lobes"], else lobes_dir / lobes_pattern.

    Returns None when the record names no file and `cohort.lobes_dir` is not set.
    Maps are paired with scans by scan id only, never by file order.
    """
    if record.get("lobes"):
        return Path(record["lobes"])
    if cohort.get("lobes_dir"):
        return Path(cohort["lobes_dir"]) / cohort["lobes_pattern"].format(scan_id=record["scan_id"])
    return None


def find_lobe_map(record: dict, cohort: dict) -> Path:
    """Return the path of the scan's lobe map; raise PipelineInputError naming every place tried."""
    scan_id = record["scan_id"]
    tried = []
    if record.get("lobes"):
        tried.append(f"the cohort table's lobes column ({record['lobes']})")
    else:
        tried.append("the cohort table's lobes column (empty)")
    if not record.get("lobes") and cohort.get("lobes_dir"):
        tried.append(f"cohort.lobes_dir + cohort.lobes_pattern ({lobe_map_path(record, cohort)})")
    elif not record.get("lobes"):
        tried.append("cohort.lobes_dir (not set)")

    path = lobe_map_path(record, cohort)
    if path is None or not path.exists():
        raise input_error(
            scan_id,
            path,
            "no lobe map found; tried " + " and ".join(tried),
            "Fill in the lobes column for this scan, or set cohort.lobes_dir and cohort.lobes_pattern (with {scan_id}) so that the file is found",
        )
    return path


def convention_labels(convention: str, cohort: dict) -> dict[str, int]:
    """Return {lobe name: label value} of a convention preset, or of `cohort.custom_lobe_labels` for "custom"."""
    if convention == "custom":
        labels = cohort.get("custom_lobe_labels") or {}
        if set(labels) != set(LOBE_NAMES):
            raise input_error(
                None,
                None,
                f"cohort.custom_lobe_labels has lobes {sorted(labels)}, expected exactly {sorted(LOBE_NAMES)}",
                "Give one label value per lobe, for example {lul: 1, lll: 2, rul: 3, rll: 4, rml: 5}",
            )
        values = [labels[name] for name in LOBE_NAMES]
        if any(not isinstance(value, int) or value <= 0 for value in values) or len(set(values)) != len(values):
            raise input_error(
                None, None, f"cohort.custom_lobe_labels = {labels} must hold five different positive integers", "Correct the setting"
            )
        return {name: int(labels[name]) for name in LOBE_NAMES}
    if convention not in CONVENTIONS:
        raise input_error(
            None,
            None,
            f"unknown lobe convention {convention!r}",
            f"Use one of {sorted(CONVENTIONS) + ['custom']} (cohort table column lobe_convention or cohort.default_lobe_convention)",
        )
    return dict(CONVENTIONS[convention])


def map_to_internal(labels_zyx: np.ndarray, labels: dict[str, int]) -> tuple[np.ndarray, dict[int, int]]:
    """Convert a label map to the internal lobe labels and count the labels that are not lobes.

    Args:
        labels_zyx: integer label map (z, y, x) in the source convention.
        labels: {lobe name: label value in the source convention}.

    Returns:
        (uint8 map (z, y, x) with internal labels 1..5 and 0 elsewhere,
        {dropped source label: voxel count} for every other non-zero label).
    """
    internal_zyx = np.zeros(labels_zyx.shape, dtype=np.uint8)
    for name, source_label in labels.items():
        internal_zyx[labels_zyx == source_label] = LOBE_LABELS[name]
    values, counts = np.unique(labels_zyx[(internal_zyx == 0) & (labels_zyx != 0)], return_counts=True)
    dropped = {int(value): int(count) for value, count in zip(values, counts)}
    return internal_zyx, dropped


def physical_box(image: sitk.Image, mask_zyx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return the axis-aligned physical box (low, high corners, x y z in mm, LPS) of an image.

    With `mask_zyx` the box covers only the voxels where the mask is true.
    The box runs to the outer voxel edges (index -0.5 .. size - 0.5).
    """
    if mask_zyx is None:
        low_xyz = np.zeros(3)
        high_xyz = np.array(image.GetSize(), dtype=float) - 1
    else:
        indices_zyx = [np.flatnonzero(np.any(mask_zyx, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
        low_xyz = np.array([indices_zyx[2 - axis][0] for axis in range(3)], dtype=float)
        high_xyz = np.array([indices_zyx[2 - axis][-1] for axis in range(3)], dtype=float)
    corners_mm = [
        image.TransformContinuousIndexToPhysicalPoint([float(value) for value in corner])
        for corner in itertools.product(*zip(low_xyz - 0.5, high_xyz + 0.5))
    ]
    corners_mm = np.array(corners_mm)
    return corners_mm.min(axis=0), corners_mm.max(axis=0)


def overlap_fraction(box: tuple[np.ndarray, np.ndarray], reference_box: tuple[np.ndarray, np.ndarray]) -> float:
    """Return the fraction of the volume of `box` that lies inside `reference_box` (both (low, high) in mm)."""
    low = np.maximum(box[0], reference_box[0])
    high = np.minimum(box[1], reference_box[1])
    inside = np.prod(np.clip(high - low, 0.0, None))
    volume = np.prod(box[1] - box[0])
    return float(inside / volume) if volume > 0 else 0.0


def align_to_ct(
    lobes: sitk.Image, ct: sitk.Image, min_overlap_fraction: float, scan_id: str, path
) -> tuple[sitk.Image, bool]:
    """Put an internal lobe map on the CT grid; return (uint8 map on the CT grid, whether it was resampled).

    A map whose grid matches the CT within resample.grid_differences' tolerances
    takes the CT's geometry as is. Otherwise the fraction of its lobe-voxel box
    inside the CT box must reach `min_overlap_fraction`. The map is then
    resampled with nearest neighbour, and CT voxels outside the map become background.
    """
    differences = grid_differences(lobes, ct)
    if not differences:
        aligned = sitk.Image(lobes)
        aligned.CopyInformation(ct)
        return aligned, False

    log.info("scan %s: the lobe map's grid differs from the CT (%s); resampling it", scan_id, "; ".join(differences))
    lobe_box = physical_box(lobes, sitk.GetArrayViewFromImage(lobes) > 0)
    ct_box = physical_box(ct)
    fraction = overlap_fraction(lobe_box, ct_box)
    log.info("scan %s: %.1f%% of the lobe voxels' box lies inside the CT", scan_id, 100 * fraction)
    if fraction < min_overlap_fraction:
        problem = "does not overlap the CT" if fraction == 0 else f"overlaps the CT by only {100 * fraction:.1f}%"
        raise input_error(
            scan_id,
            path,
            f"the box of the lobe map's lobe voxels ({_box_text(lobe_box)}) {problem} (CT box {_box_text(ct_box)}, LPS mm; "
            f"lobes.min_overlap_fraction = {min_overlap_fraction})",
            "Check that the lobe map belongs to this scan and that both files keep their origin and orientation",
        )
    aligned = resample_to_reference(sitk.Cast(lobes, sitk.sitkUInt8), ct, "nearest", 0)
    return aligned, True


def lobe_statistics(lobes: sitk.Image) -> dict[str, dict]:
    """Return per lobe: label, voxels, volume_ml and centroid_mm (x, y, z, physical LPS; None when absent)."""
    lobes_zyx = sitk.GetArrayViewFromImage(lobes)
    voxel_ml = float(np.prod(lobes.GetSpacing())) / 1000.0
    statistics = {}
    for name in LOBE_NAMES:
        indices_zyx = np.nonzero(lobes_zyx == LOBE_LABELS[name])
        voxels = int(indices_zyx[0].size)
        centroid_mm = None
        if voxels:
            mean_index_xyz = [float(indices_zyx[axis].mean()) for axis in (2, 1, 0)]
            centroid_mm = [round(value, 3) for value in lobes.TransformContinuousIndexToPhysicalPoint(mean_index_xyz)]
        statistics[name] = {"label": LOBE_LABELS[name], "voxels": voxels, "volume_ml": round(voxels * voxel_ml, 3), "centroid_mm": centroid_mm}
    return statistics


def check_positions(centroids_mm: dict[str, list[float]]) -> tuple[dict[str, bool], list[str]]:
    """Check the relative positions of lobe centroids in physical LPS coordinates.

    The rules compare only lobes present in `centroids_mm`. Every left lobe
    has a larger x than every right lobe. RML is anterior to RLL (smaller y).
    LUL, RUL and RML each have a larger z - y than the lower lobe on their side.
    The fissures between upper (or middle) and lower lobes run obliquely, so the
    upper lobe lies superior and anterior to the lower lobe. z - y (superior
    plus anterior) keeps that order also in maps that cover only the lung
    bases, where the lingula lies in front of the LLL but not above it.

    Returns:
        ({lobe: True when every rule involving it holds}, list of failed rules as text).
    """
    rules = []
    for left, right in itertools.product(sorted(LEFT_LOBES), sorted(RIGHT_LOBES)):
        rules.append((left, right, "x", "to the left of"))
    rules += [
        ("lul", "lll", "z-y", "above or in front of"),
        ("rul", "rll", "z-y", "above or in front of"),
        ("rml", "rll", "z-y", "above or in front of"),
        ("rll", "rml", "y", "posterior to"),
    ]
    position_ok = {name: True for name in centroids_mm}
    problems = []
    for first, second, measure, relation in rules:
        if first not in centroids_mm or second not in centroids_mm:
            continue
        first_mm = _position_measure(centroids_mm[first], measure)
        second_mm = _position_measure(centroids_mm[second], measure)
        if first_mm <= second_mm:
            position_ok[first] = position_ok[second] = False
            problems.append(f"{first.upper()} should be {relation} {second.upper()}: {measure} = {first_mm:.1f} vs {second_mm:.1f} mm")
    return position_ok, problems


def _position_measure(centroid_mm: list[float], measure: str) -> float:
    x, y, z = centroid_mm
    return {"x": x, "y": y, "z-y": z - y}[measure]


def build_lobe_map(
    ct: sitk.Image, source: sitk.Image, convention: str, cohort: dict, lobe_settings: dict, scan_id: str, path
) -> tuple[sitk.Image, dict]:
    """Convert a lobe map to internal labels on the CT grid and check it.

    Args:
        ct: the scan's CT (its grid defines the output grid).
        source: integer lobe map in `convention` (read_label_map).
        convention: preset name in anatomy.CONVENTIONS or "custom".
        cohort, lobe_settings: the `cohort` and `lobes` config sections.

    Returns:
        (uint8 internal lobe map on the CT grid, QC dictionary for qc.json).
        NOTE: with lobes.allow_missing, the few voxels of a lobe below
        lobes.min_lobe_volume_ml are set to 0, so later stages see it as absent.

    Raises:
        PipelineInputError: empty map, no overlap with the CT, a missing lobe
            (unless allowed), or lobes in implausible positions (position_check: error).
    """
    labels = convention_labels(convention, cohort)
    source_zyx = sitk.GetArrayViewFromImage(source)
    if not np.any(source_zyx):
        raise input_error(scan_id, path, "the lobe map is empty (every voxel is 0)", "Run the lobe segmentation again for this scan")

    internal_zyx, dropped = map_to_internal(source_zyx, labels)
    if dropped:
        counts = ", ".join(f"{label}: {count}" for label, count in dropped.items())
        log.info("scan %s: dropped %d labels that are not lobes in convention %r (label: voxels) %s", scan_id, len(dropped), convention, counts)
    if not np.any(internal_zyx):
        found = np.unique(source_zyx[source_zyx > 0])[:20].tolist()
        raise input_error(
            scan_id,
            path,
            f"the lobe map has no lobe label of convention {convention!r} {labels}; labels found: {found}",
            "Set the right lobe_convention for this scan (diag, lungmask, totalsegmentator, totalsegmentator_v1 or custom)",
        )
    internal = sitk.GetImageFromArray(internal_zyx)
    internal.CopyInformation(source)

    lobes, resampled = align_to_ct(internal, ct, lobe_settings["min_overlap_fraction"], scan_id, path)
    statistics = lobe_statistics(lobes)

    min_volume_ml = lobe_settings["min_lobe_volume_ml"]
    missing = [name for name in LOBE_NAMES if statistics[name]["volume_ml"] < min_volume_ml]
    if missing:
        described = ", ".join(f"{LOBE_TITLES[name]} ({name.upper()}, label {labels[name]}): {statistics[name]['volume_ml']:g} ml" for name in missing)
        if not lobe_settings["allow_missing"]:
            raise input_error(
                scan_id,
                path,
                f"lobes missing or smaller than lobes.min_lobe_volume_ml = {min_volume_ml:g} ml: {described}",
                "Check the lobe segmentation, or set lobes.allow_missing: true to skip these lobes in every later stage",
            )
        log.warning("scan %s: skipping missing lobes (lobes.allow_missing): %s", scan_id, described)
        lobes_zyx = sitk.GetArrayFromImage(lobes)
        for name in missing:
            lobes_zyx[lobes_zyx == LOBE_LABELS[name]] = 0
        cleaned = sitk.GetImageFromArray(lobes_zyx)
        cleaned.CopyInformation(lobes)
        lobes = cleaned

    centroids_mm = {name: statistics[name]["centroid_mm"] for name in LOBE_NAMES if name not in missing}
    position_ok, problems = check_positions(centroids_mm)
    if problems:
        text = "; ".join(problems)
        if lobe_settings["position_check"] == "error":
            raise input_error(
                scan_id,
                path,
                f"lobes in implausible positions with convention {convention!r}: {text}",
                "The labels are probably in another convention (lungmask swaps RML and RLL relative to diag); "
                "set the scan's lobe_convention, or lobes.position_check: warn to continue",
            )
        log.warning("scan %s: lobes in implausible positions with convention %r: %s", scan_id, convention, text)

    for name in LOBE_NAMES:
        statistics[name]["position_ok"] = position_ok.get(name)
    qc = {
        "scan_id": scan_id,
        "lobe_map": str(path),
        "convention": convention,
        "source_labels": labels,
        "lobes": statistics,
        "missing_lobes": missing,
        "dropped_labels": {str(label): count for label, count in dropped.items()},
        "resampled_to_ct_grid": resampled,
        "position_problems": problems,
        "min_lobe_volume_ml": min_volume_ml,
    }
    return sitk.Cast(lobes, sitk.sitkUInt8), qc


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", required=True, help="results/scans/{scan}/record.json")
    parser.add_argument("--out-lobes", required=True, help="internal lobe map on the CT grid (uint8 NIfTI)")
    parser.add_argument("--out-qc", required=True, help="QC JSON of the lobe map")
    settings.add_settings_argument(parser)
    arguments = parser.parse_args(argv)
    settings.configure_logging()

    record = io.read_json(arguments.record)
    scan_id = record["scan_id"]
    cohort = arguments.settings["cohort"]
    resample_settings = arguments.settings["resample"]
    series_uid = record.get("dicom_series") or (cohort.get("dicom_series") or {}).get(scan_id)
    convention = record.get("lobe_convention") or cohort["default_lobe_convention"]

    path = find_lobe_map(record, cohort)
    log.info("scan %s: reading CT %s and lobe map %s (convention %s)", scan_id, record["ct"], path, convention)
    ct = read_ct(
        record["ct"],
        scan_id,
        series_uid=series_uid,
        rescale=resample_settings.get("rescale"),
        max_air_percentile_hu=resample_settings["max_air_percentile_hu"],
    )
    source = read_label_map(path, scan_id)
    lobes, qc = build_lobe_map(ct, source, convention, cohort, arguments.settings["lobes"], scan_id, path)

    io.write_image(lobes, arguments.out_lobes)
    io.write_json(qc, arguments.out_qc)
    present = [name for name in LOBE_NAMES if name not in qc["missing_lobes"]]
    log.info("scan %s: wrote %s with lobes %s", scan_id, arguments.out_lobes, present)


def _box_text(box: tuple[np.ndarray, np.ndarray]) -> str:
    low, high = box
    return "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(low, high)) + "]"


if __name__ == "__main__":
    main()
