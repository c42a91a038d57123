"""Lobe-wise interval calibration and HDF5 stores of fixed-size lobe chunks.

Three steps, each a subcommand of `python -m dramseg.chunks`:

- `calibrate`: severity score -> lesion-fraction interval [r_l, r_u], narrowed
  with the candidate fraction p* to [max(min(r_l, p* - t), 0), min(r_u, p* + t)]
  (Xie et al., Eq. 2), one row per lobe in `intervals.csv`.
- `write`: crop each lobe's bounding box from the resampled scan, resize it to
  `chunks.shape` and store image, masks and interval in one HDF5 file per scan.
- `index`: one table row per stored chunk, read by the training dataset.

Resizing uses `scipy.ndimage.zoom` with `grid_mode=True` and `mode="nearest"`:
voxels are treated as cells whose outer edges map onto each other, which is
what `torch.nn.functional.interpolate(..., align_corners=False)` does.
Linear resizing (order 1) equals torch's trilinear mode and nearest resizing
(order 0) equals torch's "nearest-exact" mode. `paste_chunk` uses the same
resize, so a chunk and its pasted-back map line up.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import scipy.ndimage as ndi
import SimpleITK as sitk

from dramseg import anatomy, io, settings
from dramseg.errors import input_error
from dramseg.intervals import calibrate_interval, parse_score_intervals, score_to_interval

LOG = logging.getLogger(__name__)

LAYOUT_VERSION = 1
# gzip level 4 compresses the mostly constant masks well at little CPU cost.
GZIP_LEVEL = 4
SPLITS = ("train", "val", "test")
SCORED_SPLITS = ("train", "val")
INTERVAL_COLUMNS = ("lobe", "score", "raw_low", "raw_high", "p_star", "low", "high")
CANDIDATE_COLUMNS = ("lobe", "p_star")
INDEX_COLUMNS = ("scan_id", "split", "lobe", "store", "score", "low", "high", "p_star")
MAX_REFERENCE_LABEL = max(anatomy.SUBTYPES)
# Geometry tolerances when comparing two image grids.
SPACING_ORIGIN_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------
# Settings and small readers


def chunk_settings(all_settings: Mapping) -> dict:
    """Return the checked `chunks` section of the `--settings` JSON.

    Raises PipelineInputError naming the key when a value is out of range.
    """
    if "chunks" not in all_settings:
        raise input_error(None, None, "the settings have no 'chunks' section", "Pass --settings with a 'chunks' key")
    section = dict(all_settings["chunks"])
    shape = section.get("shape")
    if not (
        isinstance(shape, Sequence) and len(shape) == 3 and all(isinstance(size, int) and size >= 1 for size in shape)
    ):
        raise _setting_error(f"chunks.shape must be three positive sizes (z, y, x), found {shape!r}")
    margin = section.get("margin_voxels")
    if not (isinstance(margin, int) and margin >= 0):
        raise _setting_error(f"chunks.margin_voxels must be an integer >= 0, found {margin!r}")
    window = section.get("hu_window")
    if not (isinstance(window, Sequence) and len(window) == 2 and float(window[0]) < float(window[1])):
        raise _setting_error(f"chunks.hu_window must be [low, high] in HU with low < high, found {window!r}")
    tolerance = section.get("calibration_tolerance")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise _setting_error(f"chunks.calibration_tolerance must be a fraction >= 0, found {tolerance!r}")
    background = section.get("background_value")
    if not isinstance(background, (int, float)):
        raise _setting_error(f"chunks.background_value must be a number, found {background!r}")
    try:
        parse_score_intervals(section["score_intervals"])
    except (KeyError, TypeError, ValueError) as error:
        raise _setting_error(f"chunks.score_intervals is invalid: {error}") from error
    return section


def _setting_error(problem: str):
    return input_error(None, None, problem, "Fix it in config.yaml")


def read_record(path: str | Path) -> dict:
    """Read a scan record and check `scan_id` and `split`."""
    record = io.read_json(path)
    for key in ("scan_id", "split"):
        if key not in record:
            raise input_error(None, path, f"the scan record has no {key!r} key", "Rerun the scans stage")
    if record["split"] not in SPLITS:
        raise input_error(
            record["scan_id"], path, f"split {record['split']!r} is not one of {SPLITS}", "Fix the cohort table"
        )
    return record


def read_candidate_table(path: str | Path, scan_id: str) -> pd.DataFrame:
    """Read the candidates stage's `lobes.csv` and check lobe names and p*."""
    table = pd.read_csv(path)
    missing = [column for column in CANDIDATE_COLUMNS if column not in table.columns]
    if missing:
        raise input_error(
            scan_id, path, f"the candidate table lacks the columns {missing}", "Rerun the candidates stage"
        )
    for row in table.itertuples(index=False):
        if row.lobe not in anatomy.LOBE_NAMES:
            raise input_error(
                scan_id, path, f"unknown lobe name {row.lobe!r}, expected one of {anatomy.LOBE_NAMES}",
                "Rerun the candidates stage",
            )
        if not 0.0 <= row.p_star <= 1.0:
            raise input_error(
                scan_id, path, f"p_star of lobe {row.lobe!r} is {row.p_star!r}, expected a fraction in [0, 1]",
                "Rerun the candidates stage",
            )
    if table["lobe"].duplicated().any():
        raise input_error(scan_id, path, "the candidate table lists a lobe twice", "Rerun the candidates stage")
    return table


def read_intervals(path: str | Path, scan_id: str) -> pd.DataFrame:
    """Read an `intervals.csv` written by `calibrate` and check its columns."""
    table = pd.read_csv(path)
    missing = [column for column in INTERVAL_COLUMNS if column not in table.columns]
    if missing:
        raise input_error(scan_id, path, f"the interval table lacks the columns {missing}", "Rerun calibrate_intervals")
    unknown = sorted(set(table["lobe"]) - set(anatomy.LOBE_NAMES))
    if unknown:
        raise input_error(
            scan_id, path, f"unknown lobe names {unknown}, expected names from {anatomy.LOBE_NAMES}",
            "Rerun calibrate_intervals",
        )
    return table


# ---------------------------------------------------------------------------
# Interval calibration


def calibrate_lobes(
    scan_id: str,
    split: str,
    scores: Mapping[str, int] | None,
    candidate_table: pd.DataFrame,
    score_intervals: Mapping[int, tuple[float, float]],
    tolerance: float,
    source=None,
) -> pd.DataFrame:
    """Return one row per lobe of the candidate table with its raw and calibrated interval.

    Columns: lobe, score, raw_low, raw_high, p_star, low, high (lesion fractions).
    A scan without scores gets score -1 and NaN intervals when it is a test
    scan; a train or val scan without scores raises PipelineInputError. Lobes
    scored in `scores` but absent from the candidate table are skipped with a
    warning. `source` names the record file in messages.
    """
    if scores is None and split in SCORED_SPLITS:
        raise input_error(
            scan_id, source, f"the {split} scan has no severity scores",
            "Give scores for every lobe in the cohort table, or move the scan to the test split",
        )
    p_star_by_lobe = dict(zip(candidate_table["lobe"], candidate_table["p_star"]))
    if scores is not None:
        for lobe in anatomy.LOBE_NAMES:
            if lobe in scores and lobe not in p_star_by_lobe:
                LOG.warning("scan %s: lobe %s is scored but not in the candidate table; skipping it", scan_id, lobe)

    rows = []
    for lobe in anatomy.LOBE_NAMES:
        if lobe not in p_star_by_lobe:
            continue
        p_star = float(p_star_by_lobe[lobe])
        if scores is None:
            rows.append(dict(lobe=lobe, score=-1, raw_low=math.nan, raw_high=math.nan, p_star=p_star,
                             low=math.nan, high=math.nan))
            continue
        score = scores.get(lobe)
        if score is None:
            raise input_error(
                scan_id, source, f"lobe {lobe!r} has no severity score (scores: {dict(scores)})",
                "Give a score 0-5 for every lobe present in the lobe map",
            )
        try:
            raw_low, raw_high = score_to_interval(int(score), score_intervals)
        except ValueError as error:
            fix = "Fix the score in the cohort table"
            raise input_error(scan_id, source, f"lobe {lobe!r}: {error}", fix) from error
        low, high = calibrate_interval(raw_low, raw_high, p_star, tolerance)
        rows.append(dict(lobe=lobe, score=int(score), raw_low=raw_low, raw_high=raw_high, p_star=p_star,
                         low=low, high=high))
    return pd.DataFrame(rows, columns=list(INTERVAL_COLUMNS))


# ---------------------------------------------------------------------------
# Geometry and resizing


def lobe_bounding_box(
    lobe_mask_zyx: np.ndarray, margin_voxels: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Return (start, stop) voxel indices (z, y, x, stop exclusive) of a mask's box.

    The box is grown by `margin_voxels` on every side and clipped to the volume.
    Raises ValueError for an empty mask.
    """
    coordinates = np.nonzero(lobe_mask_zyx)
    if coordinates[0].size == 0:
        raise ValueError("the lobe mask is empty")
    start = tuple(max(int(axis.min()) - margin_voxels, 0) for axis in coordinates)
    stop = tuple(
        min(int(axis.max()) + 1 + margin_voxels, size) for axis, size in zip(coordinates, lobe_mask_zyx.shape)
    )
    return start, stop


def resize_volume(volume_zyx: np.ndarray, shape_zyx: Sequence[int], order: int) -> np.ndarray:
    """Resize a 3D array to `shape_zyx` with cell-aligned sampling (torch align_corners=False).

    order 1 is trilinear (returns float32); order 0 is nearest ("nearest-exact",
    keeps the dtype). Equal shapes return a copy unchanged.
    """
    shape_zyx = tuple(int(size) for size in shape_zyx)
    source = volume_zyx.astype(np.float32) if order > 0 else volume_zyx
    if tuple(volume_zyx.shape) == shape_zyx:
        return source.copy()
    factors = [target / size for target, size in zip(shape_zyx, volume_zyx.shape)]
    resized = ndi.zoom(source, factors, order=order, mode="nearest", grid_mode=True, prefilter=False)
    if resized.shape != shape_zyx:
        raise RuntimeError(f"resizing {volume_zyx.shape} to {shape_zyx} produced {resized.shape}")
    return resized


def window_intensities(ct_zyx: np.ndarray, hu_window: Sequence[float]) -> np.ndarray:
    """Map HU linearly from [low, high] to [0, 1] as float32, clipping values outside the window."""
    low, high = float(hu_window[0]), float(hu_window[1])
    scaled = (ct_zyx.astype(np.float32) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def paste_chunk(
    chunk_zyx: np.ndarray,
    bbox_start: Sequence[int],
    bbox_stop: Sequence[int],
    volume_shape: Sequence[int],
    lobe_mask: np.ndarray | None = None,
    order: int = 1,
) -> np.ndarray:
    """Resize a chunk-sized map back to its lobe box and paste it into a zero volume.

    chunk_zyx: map on the chunk grid (z, y, x). bbox_start, bbox_stop: the box
    in the volume (z, y, x, stop exclusive), as stored in the chunk attributes.
    volume_shape: (z, y, x) of the resampled scan. lobe_mask: optional boolean
    array of `volume_shape`; values are pasted only where it is true. order:
    1 trilinear (float32 output), 0 nearest (chunk dtype kept). Voxels outside
    the box, or outside the lobe mask when given, are zero.
    """
    start = tuple(int(index) for index in bbox_start)
    stop = tuple(int(index) for index in bbox_stop)
    volume_shape = tuple(int(size) for size in volume_shape)
    if not all(0 <= low < high <= size for low, high, size in zip(start, stop, volume_shape)):
        raise ValueError(f"box {start}-{stop} does not lie inside a volume of shape {volume_shape}")
    if lobe_mask is not None and tuple(lobe_mask.shape) != volume_shape:
        raise ValueError(f"lobe mask shape {lobe_mask.shape} differs from the volume shape {volume_shape}")

    box_shape = tuple(high - low for low, high in zip(start, stop))
    resized = resize_volume(chunk_zyx, box_shape, order)
    volume = np.zeros(volume_shape, dtype=resized.dtype)
    box = tuple(slice(low, high) for low, high in zip(start, stop))
    if lobe_mask is None:
        volume[box] = resized
    else:
        inside = lobe_mask[box].astype(bool)
        volume[box][inside] = resized[inside]
    return volume


def check_same_grid(scan_id: str, reference: sitk.Image, reference_path, image: sitk.Image, path) -> None:
    """Raise PipelineInputError unless two images share size, spacing, origin and direction."""
    problems = []
    if reference.GetSize() != image.GetSize():
        problems.append(f"size {image.GetSize()} vs {reference.GetSize()}")
    if not np.allclose(reference.GetSpacing(), image.GetSpacing(), atol=SPACING_ORIGIN_TOLERANCE_MM, rtol=0):
        problems.append(f"spacing {image.GetSpacing()} mm vs {reference.GetSpacing()} mm")
    if not np.allclose(reference.GetOrigin(), image.GetOrigin(), atol=SPACING_ORIGIN_TOLERANCE_MM, rtol=0):
        problems.append(f"origin {image.GetOrigin()} mm vs {reference.GetOrigin()} mm")
    if not np.allclose(reference.GetDirection(), image.GetDirection(), atol=DIRECTION_TOLERANCE, rtol=0):
        problems.append(f"direction {image.GetDirection()} vs {reference.GetDirection()}")
    if problems:
        raise input_error(
            scan_id, path,
            f"grid differs from {str(reference_path)!r}: " + "; ".join(problems) + " (this file vs the CT)",
            "Rerun the resample and candidates stages so that all files share the resampled CT grid",
        )


def resample_reference(scan_id: str, reference: sitk.Image, reference_path, ct: sitk.Image) -> sitk.Image:
    """Resample a reference lesion mask (0..3) onto the resampled CT grid with nearest neighbour.

    Raises PipelineInputError when the labels lie outside 0..3 or the CT's
    centre lies outside the reference's physical extent.
    """
    labels = sitk.GetArrayViewFromImage(reference)
    if labels.min() < 0 or labels.max() > MAX_REFERENCE_LABEL:
        raise input_error(
            scan_id, reference_path,
            f"reference labels span {labels.min()}..{labels.max()}, expected 0..{MAX_REFERENCE_LABEL}",
            "Give a mask with 0 background, 1 ground glass, 2 consolidation, 3 mixed",
        )
    centre_index = [(size - 1) / 2 for size in ct.GetSize()]
    centre_mm = ct.TransformContinuousIndexToPhysicalPoint(centre_index)
    centre_in_reference = reference.TransformPhysicalPointToContinuousIndex(centre_mm)
    if not all(-0.5 <= index <= size - 0.5 for index, size in zip(centre_in_reference, reference.GetSize())):
        raise input_error(
            scan_id, reference_path,
            f"the CT centre {tuple(round(value, 1) for value in centre_mm)} mm lies outside the reference mask",
            "Check that the reference mask belongs to this CT",
        )
    return sitk.Resample(reference, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# ---------------------------------------------------------------------------
# Chunk extraction and the HDF5 store


def extract_lobe_chunk(
    ct_hu_zyx: np.ndarray,
    lobes_zyx: np.ndarray,
    label: int,
    label_maps: Mapping[str, np.ndarray],
    chunk_settings_section: Mapping,
) -> dict:
    """Cut one lobe's chunk from the resampled scan.

    ct_hu_zyx: float HU. lobes_zyx: internal lobe labels. label_maps: name ->
    uint8 array of the same shape (candidates, vessels, reference). Returns
    `image` (float32, HU window rescaled to [0, 1], background value outside
    the lobe), `mask` and each label map (uint8, zero outside the lobe) on the
    chunk grid, plus `bbox_start_zyx` and `bbox_stop_zyx`.
    """
    shape_zyx = tuple(int(size) for size in chunk_settings_section["shape"])
    lobe_mask = lobes_zyx == label
    start, stop = lobe_bounding_box(lobe_mask, int(chunk_settings_section["margin_voxels"]))
    box = tuple(slice(low, high) for low, high in zip(start, stop))

    # Window before resizing, so that values far outside the window (padding
    # at -3024 HU, metal) cannot bleed into neighbouring voxels.
    image = resize_volume(window_intensities(ct_hu_zyx[box], chunk_settings_section["hu_window"]), shape_zyx, 1)
    mask = resize_volume(lobe_mask[box].astype(np.uint8), shape_zyx, 0)
    image[mask == 0] = float(chunk_settings_section["background_value"])

    chunk = {"image": image, "mask": mask, "bbox_start_zyx": start, "bbox_stop_zyx": stop}
    for name, label_map in label_maps.items():
        chunk[name] = resize_volume(label_map[box].astype(np.uint8), shape_zyx, 0) * mask
    return chunk


def write_chunk_store(
    path: str | Path,
    record: Mapping,
    ct: sitk.Image,
    lobes: sitk.Image,
    candidates: sitk.Image,
    vessels: sitk.Image,
    intervals: pd.DataFrame,
    chunk_settings_section: Mapping,
    reference: sitk.Image | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[str]:
    """Write one scan's lobe chunks to an HDF5 store atomically; return the stored lobe names.

    All images must share the resampled CT grid; `reference`, when given, must
    already be resampled onto it. `sources` maps "ct", "lobes", "candidates",
    "vessels", "intervals" to file names for error messages. The layout is
    described in docs/chunk-store.md. Nothing is left at `path` on error.
    """
    scan_id = record["scan_id"]
    sources = dict(sources or {})
    ct_source = sources.get("ct")
    for name, image in (("lobes", lobes), ("candidates", candidates), ("vessels", vessels), ("reference", reference)):
        if image is not None:
            check_same_grid(scan_id, ct, ct_source, image, sources.get(name, name))

    ct_hu_zyx = sitk.GetArrayFromImage(ct).astype(np.float32)
    lobes_zyx = sitk.GetArrayFromImage(lobes)
    _check_label_range(scan_id, sources.get("lobes"), "lobe labels", lobes_zyx, len(anatomy.LOBE_NAMES))
    label_maps = {"candidates": sitk.GetArrayFromImage(candidates), "vessels": sitk.GetArrayFromImage(vessels)}
    for name, label_map in label_maps.items():
        _check_label_range(scan_id, sources.get(name), f"{name} values", label_map, 1)
    if reference is not None:
        label_maps["reference"] = sitk.GetArrayFromImage(reference)

    present = [lobe for lobe in anatomy.LOBE_NAMES if np.any(lobes_zyx == anatomy.LOBE_LABELS[lobe])]
    interval_rows = {row.lobe: row for row in intervals.itertuples(index=False)}
    absent_scored = sorted(set(interval_rows) - set(present))
    if absent_scored:
        raise input_error(
            scan_id, sources.get("intervals"), f"lobes {absent_scored} have intervals but no voxels in the lobe map",
            "Rerun the candidates and chunks stages on the current lobe map",
        )
    stored = [lobe for lobe in present if lobe in interval_rows]
    for lobe in sorted(set(present) - set(stored)):
        LOG.warning("scan %s: lobe %s has no row in the interval table; no chunk is written for it", scan_id, lobe)
    if not stored:
        raise input_error(
            scan_id, sources.get("lobes"), "no lobe has both voxels and an interval", "Check the lobe map"
        )

    shape_zyx = np.array([int(size) for size in chunk_settings_section["shape"]], dtype=np.int64)
    spacing_xyz_mm = np.array(ct.GetSpacing(), dtype=np.float64)
    with io.atomic_path(path) as temporary:
        with h5py.File(temporary, "w") as store:
            store.attrs["scan_id"] = scan_id
            store.attrs["split"] = record["split"]
            store.attrs["chunk_shape_zyx"] = shape_zyx
            store.attrs["settings_hash"] = settings.settings_hash(dict(chunk_settings_section))
            store.attrs["layout_version"] = LAYOUT_VERSION
            lobe_groups = store.create_group("lobes")
            for lobe in stored:
                label = anatomy.LOBE_LABELS[lobe]
                chunk = extract_lobe_chunk(ct_hu_zyx, lobes_zyx, label, label_maps, chunk_settings_section)
                group = lobe_groups.create_group(lobe)
                for name in ("image", "mask", *label_maps):
                    group.create_dataset(
                        name, data=chunk[name], chunks=tuple(shape_zyx), compression="gzip",
                        compression_opts=GZIP_LEVEL,
                    )
                _write_lobe_attributes(group, lobe, label, interval_rows[lobe], chunk, ct, spacing_xyz_mm)
                LOG.info("scan %s: stored lobe %s, box %s-%s", scan_id, lobe, chunk["bbox_start_zyx"],
                         chunk["bbox_stop_zyx"])
    return stored


def _check_label_range(scan_id, path, description: str, array: np.ndarray, max_label: int) -> None:
    low, high = array.min(), array.max()
    if low < 0 or high > max_label:
        raise input_error(
            scan_id, path, f"{description} span {low}..{high}, expected 0..{max_label}",
            "Rerun the stage that wrote this file",
        )


def _write_lobe_attributes(group, lobe, label, interval_row, chunk, ct, spacing_xyz_mm) -> None:
    start = chunk["bbox_start_zyx"]
    stop = chunk["bbox_stop_zyx"]
    group.attrs["label"] = label
    group.attrs["lobe"] = lobe
    group.attrs["score"] = int(interval_row.score)
    group.attrs["raw_interval"] = np.array([interval_row.raw_low, interval_row.raw_high], dtype=np.float64)
    group.attrs["interval"] = np.array([interval_row.low, interval_row.high], dtype=np.float64)
    group.attrs["p_star"] = float(interval_row.p_star)
    group.attrs["bbox_start_zyx"] = np.array(start, dtype=np.int64)
    group.attrs["bbox_stop_zyx"] = np.array(stop, dtype=np.int64)
    start_index_xyz = [int(index) for index in reversed(start)]
    group.attrs["bbox_origin_mm"] = np.array(ct.TransformIndexToPhysicalPoint(start_index_xyz), dtype=np.float64)
    group.attrs["spacing_mm"] = spacing_xyz_mm
    group.attrs["source_shape_zyx"] = np.array([high - low for low, high in zip(start, stop)], dtype=np.int64)


def build_index(stores: Sequence[str | Path], intervals: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Return one row per stored chunk: scan_id, split, lobe, store, score, low, high, p_star.

    Values come from the store attributes. Each interval table, when given,
    is paired with the store in the same folder, and its scores and intervals
    must equal the stored ones (a stale store raises PipelineInputError).
    """
    stores_by_folder = {Path(store).parent: store for store in stores}
    checked = {}
    for table_path in intervals:
        folder = Path(table_path).parent
        if folder not in stores_by_folder:
            raise input_error(None, table_path, f"no chunk store in the folder {str(folder)!r}",
                              "Pass the interval tables and stores of the same scans")
        checked[stores_by_folder[folder]] = table_path

    rows = []
    for store_path in stores:
        with h5py.File(store_path, "r") as store:
            scan_id = str(store.attrs["scan_id"])
            split = str(store.attrs["split"])
            store_rows = []
            for lobe in anatomy.LOBE_NAMES:
                if lobe not in store["lobes"]:
                    continue
                attributes = store["lobes"][lobe].attrs
                low, high = (float(value) for value in attributes["interval"])
                store_rows.append(dict(scan_id=scan_id, split=split, lobe=lobe, store=str(store_path),
                                       score=int(attributes["score"]), low=low, high=high,
                                       p_star=float(attributes["p_star"])))
        if store_path in checked:
            _check_store_matches_intervals(scan_id, store_path, store_rows, checked[store_path])
        rows.extend(store_rows)
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def _check_store_matches_intervals(scan_id, store_path, store_rows, table_path) -> None:
    table = read_intervals(table_path, scan_id).set_index("lobe")
    for row in store_rows:
        expected = table.loc[row["lobe"]] if row["lobe"] in table.index else None
        same = expected is not None and int(expected["score"]) == row["score"] and all(
            np.isclose(expected[key], row[key], equal_nan=True) for key in ("low", "high", "p_star")
        )
        if not same:
            raise input_error(
                scan_id, store_path, f"lobe {row['lobe']!r} differs from the interval table {str(table_path)!r}",
                "Rerun write_chunks for this scan",
            )


# ---------------------------------------------------------------------------
# Command line


def _run_calibrate(arguments) -> None:
    section = chunk_settings(arguments.settings)
    record = read_record(arguments.record)
    scan_id = record["scan_id"]
    table = read_candidate_table(arguments.candidates_table, scan_id)
    intervals = calibrate_lobes(
        scan_id, record["split"], record.get("scores"), table, parse_score_intervals(section["score_intervals"]),
        float(section["calibration_tolerance"]), source=arguments.record,
    )
    io.write_csv(intervals, arguments.out)
    LOG.info("scan %s: wrote intervals of %d lobes to %s", scan_id, len(intervals), arguments.out)


def _run_write(arguments) -> None:
    section = chunk_settings(arguments.settings)
    record = read_record(arguments.record)
    scan_id = record["scan_id"]
    sources = {"ct": arguments.ct, "lobes": arguments.lobes, "candidates": arguments.candidates,
               "vessels": arguments.vessels, "intervals": arguments.intervals}
    ct = sitk.ReadImage(str(arguments.ct), sitk.sitkFloat32)
    images = {name: sitk.ReadImage(str(sources[name])) for name in ("lobes", "candidates", "vessels")}
    reference = None
    if record.get("reference"):
        sources["reference"] = record["reference"]
        reference = resample_reference(scan_id, sitk.ReadImage(str(record["reference"])), record["reference"], ct)
    intervals = read_intervals(arguments.intervals, scan_id)
    stored = write_chunk_store(
        arguments.out, record, ct, images["lobes"], images["candidates"], images["vessels"], intervals, section,
        reference=reference, sources=sources,
    )
    LOG.info("scan %s: wrote %d lobe chunks to %s", scan_id, len(stored), arguments.out)


def _run_index(arguments) -> None:
    index = build_index(arguments.stores, arguments.intervals or ())
    io.write_csv(index, arguments.out)
    LOG.info("wrote %d chunk rows of %d stores to %s", len(index), len(arguments.stores), arguments.out)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m dramseg.chunks`."""
    parser = argparse.ArgumentParser(prog="python -m dramseg.chunks", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    calibrate = commands.add_parser("calibrate", help="write a scan's calibrated lesion-fraction intervals")
    calibrate.add_argument("--record", required=True, help="results/scans/{scan}/record.json")
    calibrate.add_argument("--candidates-table", required=True, help="results/candidates/{scan}/lobes.csv")
    calibrate.add_argument("--out", required=True, help="intervals.csv to write")
    settings.add_settings_argument(calibrate)
    calibrate.set_defaults(run=_run_calibrate)

    write = commands.add_parser("write", help="write a scan's HDF5 store of lobe chunks")
    write.add_argument("--record", required=True, help="results/scans/{scan}/record.json")
    write.add_argument("--ct", required=True, help="resampled CT (HU)")
    write.add_argument("--lobes", required=True, help="resampled lobe map (internal labels)")
    write.add_argument("--candidates", required=True, help="candidate lesion mask (0/1)")
    write.add_argument("--vessels", required=True, help="vessel mask (0/1)")
    write.add_argument("--intervals", required=True, help="intervals.csv from the calibrate subcommand")
    write.add_argument("--out", required=True, help="chunks.h5 to write")
    settings.add_settings_argument(write)
    write.set_defaults(run=_run_write)

    index = commands.add_parser("index", help="write the table of all stored chunks")
    index.add_argument("--stores", nargs="+", required=True, help="chunks.h5 files")
    index.add_argument("--intervals", nargs="*", default=[], help="intervals.csv files to check the stores against")
    index.add_argument("--out", required=True, help="index.csv to write")
    index.set_defaults(run=_run_index)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run one subcommand: calibrate, write or index."""
    settings.configure_logging()
    arguments = build_parser().parse_args(argv)
    arguments.run(arguments)


if __name__ == "__main__":
    main()
