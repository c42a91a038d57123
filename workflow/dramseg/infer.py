"""Scan-level inference: lobe chunks through a trained network, tiled back into the CT's geometry.

Each lobe chunk's dense map is resized back to the lobe's bounding box on the
isotropic grid and pasted only inside that lobe. The tiled map is resampled
onto the original CT grid (spacing, origin, direction), where the lesion label
is the arg-max over background, vessel and lesion. For the CAM baselines the
map of the "lesion present" class is passed through ReLU, min-max rescaled per
lobe and binarised with Otsu's threshold inside the lobe. The `postprocess`
subcommand keeps only voxels inside the candidate lesions (the "-p" methods).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import time
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu

from dramseg import io
from dramseg.anatomy import LOBE_LABELS, LOBE_NAMES
from dramseg.devices import autocast_context, resolve_device
from dramseg.errors import PipelineInputError, input_error
from dramseg.intervals import fraction_to_score, parse_score_intervals
from dramseg.models import build_model
from dramseg.settings import add_settings_argument, configure_logging
from dramseg.train import MODEL_FORMAT

log = logging.getLogger(__name__)


@dataclass
class LobeChunk:
    """One lobe's chunk from a scan's store, with where it came from on the isotropic grid."""

    name: str
    image: np.ndarray  # float32 [D, H, W], intensities in [0, 1]
    mask: np.ndarray  # float32 [D, H, W], 1 inside the lobe
    bbox_start_zyx: tuple[int, int, int]
    bbox_stop_zyx: tuple[int, int, int]


def load_model(path: str, settings: dict, device: torch.device):
    """Load a model.pt, check it against the current settings and return (model, metadata)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise PipelineInputError(f"model file {path!r} could not be read ({error}). Retrain it or point to another model.pt") from error
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise PipelineInputError(f"model file {path!r} is not a dramseg model.pt (no format tag {MODEL_FORMAT!r})")
    check_model_settings(payload, settings, path)
    model = build_model(payload["kind"], payload["model"], attention=payload["components"]["attention"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, payload


def check_model_settings(metadata: dict, settings: dict, path: str) -> None:
    """Raise PipelineInputError when the config contradicts the settings a model was trained with."""
    expected = {
        "chunks.shape": (list(settings["chunks"]["shape"]), metadata["chunk_shape_zyx"]),
        "chunks.hu_window": (list(settings["chunks"]["hu_window"]), metadata["hu_window"]),
        "chunks.background_value": (settings["chunks"]["background_value"], metadata["background_value"]),
        "resample.spacing_mm": (settings["resample"]["spacing_mm"], metadata["spacing_mm"]),
        "lobe label order": (list(LOBE_NAMES), metadata["label_order"]),
    }
    for key in ("base_width", "depth", "norm", "activation", "attention_channels"):
        expected[f"model.{key}"] = (settings["model"][key], metadata["model"][key])
    for key, (configured, trained) in expected.items():
        if configured != trained:
            raise PipelineInputError(
                f"model file {path!r} was trained with {key} = {trained!r} but the config sets {configured!r}. "
                f"Set {key}: {trained!r} in config.yaml to use this model, or retrain it"
            )


def read_store(path: str, scan_id: str) -> tuple[list[LobeChunk], dict]:
    """Read every lobe chunk of a scan's HDF5 store; return the chunks and the root attributes."""
    try:
        with h5py.File(path, "r") as store:
            root = dict(store.attrs)
            chunks = []
            for name in LOBE_NAMES:
                if name not in store.get("lobes", {}):
                    continue
                group = store["lobes"][name]
                chunks.append(
                    LobeChunk(
                        name=name,
                        image=group["image"][...].astype(np.float32),
                        mask=(group["mask"][...] > 0).astype(np.float32),
                        bbox_start_zyx=tuple(int(v) for v in group.attrs["bbox_start_zyx"]),
                        bbox_stop_zyx=tuple(int(v) for v in group.attrs["bbox_stop_zyx"]),
                    )
                )
    except OSError as error:
        raise input_error(scan_id, path, f"the chunk store could not be read ({error})", "Delete it and rerun the chunks stage") from error
    if not chunks:
        raise input_error(scan_id, path, "the chunk store contains no lobe chunks", "Check the lobe QC of this scan")
    return chunks, root


def predict_chunks(model, kind: str, chunks: list[LobeChunk], device, batch_size: int, bf16: bool, channels_last: bool) -> list[np.ndarray]:
    """Run the chunks through the network in batches; return one float32 map [C, D, H, W] per chunk.

    Regression and supervised models give the three class probabilities (C = 3);
    CAM and dCAM give the activation of the "lesion present" class (C = 1).
    """
    autocast = autocast_context(device, bf16)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    maps = []
    with torch.inference_mode():
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size]
            images = torch.from_numpy(np.stack([chunk.image for chunk in batch])[:, None]).to(device)
            images = images.contiguous(memory_format=memory_format)
            masks = torch.from_numpy(np.stack([chunk.mask for chunk in batch])).to(device)
            with autocast():
                if kind in ("cam", "dcam"):
                    output = model(images, masks)["cam"][:, 1:2]
                else:
                    output = model(images)["probabilities"]
            maps.extend(output.float().cpu().numpy())
    return maps


def rescale_activation(activation: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """ReLU, min-max rescale inside the mask, Otsu threshold inside the mask.

    Returns the rescaled map (0 outside the mask) and the threshold. A map that
    is constant inside the mask rescales to zeros with threshold 1.0, so it
    marks no lesion.
    """
    inside = mask > 0
    values = np.maximum(activation, 0.0)[inside]
    rescaled = np.zeros_like(activation, dtype=np.float32)
    if values.size == 0:
        return rescaled, 1.0
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return rescaled, 1.0
    rescaled[inside] = (values - low) / (high - low)
    return rescaled, float(threshold_otsu(rescaled[inside]))


def tile_maps(chunks: list[LobeChunk], maps: list[np.ndarray], lobes_zyx: np.ndarray, kind: str):
    """Resize each chunk map to its lobe box and paste it inside the lobe on the isotropic grid.

    Returns (tiled [C, Z, Y, X] float32, per-lobe thresholds for CAM kinds).
    Regression maps start as pure background outside the lobes.
    """
    channels = maps[0].shape[0]
    tiled = np.zeros((channels,) + lobes_zyx.shape, dtype=np.float32)
    if channels == 3:
        tiled[0] = 1.0
    thresholds = {}
    for chunk, chunk_map in zip(chunks, maps):
        if kind in ("cam", "dcam"):
            chunk_map, threshold = rescale_activation(chunk_map[0], chunk.mask)
            chunk_map = chunk_map[None]
            thresholds[chunk.name] = threshold
        start, stop = chunk.bbox_start_zyx, chunk.bbox_stop_zyx
        box_shape = tuple(b - a for a, b in zip(start, stop))
        resized = F.interpolate(torch.from_numpy(chunk_map)[None], size=box_shape, mode="trilinear", align_corners=False)[0].numpy()
        region = tuple(slice(a, b) for a, b in zip(start, stop))
        inside = lobes_zyx[region] == LOBE_LABELS[chunk.name]
        for channel in range(channels):
            target = tiled[channel][region]
            target[inside] = resized[channel][inside]
    return tiled, thresholds


def to_ct_grid(volume_zyx: np.ndarray, grid: sitk.Image, reference: sitk.Image, interpolator=sitk.sitkLinear) -> np.ndarray:
    """Resample an array on the isotropic grid (geometry of `grid`) onto `reference`'s grid."""
    image = sitk.GetImageFromArray(volume_zyx)
    image.CopyInformation(grid)
    resampled = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def lobe_table(lesion_zyx: np.ndarray, lobes_zyx: np.ndarray, spacing_xyz_mm, intervals) -> pd.DataFrame:
    """Per-lobe lesion volume, fraction and severity score of a lesion mask."""
    voxel_ml = float(np.prod(spacing_xyz_mm)) / 1000.0
    rows = []
    for name in LOBE_NAMES:
        inside = lobes_zyx == LOBE_LABELS[name]
        voxels = int(inside.sum())
        if voxels == 0:
            continue
        lesion = int((lesion_zyx[inside] > 0).sum())
        fraction = lesion / voxels
        rows.append(
            {
                "lobe": name,
                "volume_ml": voxels * voxel_ml,
                "lesion_ml": lesion * voxel_ml,
                "lesion_fraction": fraction,
                "score": fraction_to_score(fraction, intervals),
            }
        )
    return pd.DataFrame(rows, columns=["lobe", "volume_ml", "lesion_ml", "lesion_fraction", "score"])


def severity_report(scan_id: str, method: str, table: pd.DataFrame) -> dict:
    """Per-lobe percentages and scores and the total CT severity score (0-25) of one scan."""
    lobes = {
        row.lobe: {"lesion_percent": 100.0 * row.lesion_fraction, "score": int(row.score), "lesion_ml": row.lesion_ml}
        for row in table.itertuples()
    }
    missing = [name for name in LOBE_NAMES if name not in lobes]
    return {
        "scan_id": scan_id,
        "method": method,
        "lobes": lobes,
        "total_severity_score": int(table["score"].sum()),
        "max_total_severity_score": 5 * len(LOBE_NAMES),
        "lesion_percent_of_lungs": 100.0 * table["lesion_ml"].sum() / max(table["volume_ml"].sum(), 1e-9),
        "missing_lobes": missing,
        "note": "missing lobes count as score 0 in the total" if missing else "",
    }


def write_outputs(scan_id, method, probability_zyx, lesion_zyx, ct_grid: sitk.Image, lobes_zyx, settings, outputs) -> None:
    """Write the probability map, lesion mask, lobe table and severity report of one scan."""
    intervals = parse_score_intervals(settings["chunks"]["score_intervals"])
    probability = sitk.GetImageFromArray(probability_zyx.astype(np.float32))
    probability.CopyInformation(ct_grid)
    lesion = sitk.GetImageFromArray(lesion_zyx.astype(np.uint8))
    lesion.CopyInformation(ct_grid)
    table = lobe_table(lesion_zyx, lobes_zyx, ct_grid.GetSpacing(), intervals)
    io.write_image(probability, outputs["probability"])
    io.write_image(lesion, outputs["lesion"])
    io.write_csv(table, outputs["table"])
    io.write_json(severity_report(scan_id, method, table), outputs["severity"])


def infer_scan(arguments) -> None:
    settings = arguments.settings
    torch.set_num_threads(arguments.threads)
    started = time.perf_counter()
    record = io.read_json(arguments.record)
    scan_id = record["scan_id"]
    device = resolve_device(settings["device"], settings["allow_cpu_fallback"])
    model, metadata = load_model(arguments.model, settings, device)
    kind = metadata["kind"]

    chunks, _ = read_store(arguments.store, scan_id)
    grid = sitk.ReadImage(arguments.resampled_lobes)
    grid_lobes = sitk.GetArrayFromImage(grid)
    inference = settings["inference"]
    maps = predict_chunks(model, kind, chunks, device, inference["batch_lobes"], inference["bf16_autocast"], inference["channels_last"])
    tiled, thresholds = tile_maps(chunks, maps, grid_lobes, kind)
    log.info("scan %s: %d lobe chunks predicted and tiled in %.1f s", scan_id, len(chunks), time.perf_counter() - started)

    ct_lobes_image = sitk.ReadImage(arguments.lobes)
    box = io.read_json(arguments.box)
    crop = sitk.RegionOfInterest(ct_lobes_image, [int(v) for v in box["size_xyz"]], [int(v) for v in box["start_index_xyz"]])
    crop_lobes = sitk.GetArrayFromImage(crop)
    if kind in ("cam", "dcam"):
        probability_crop = to_ct_grid(tiled[0], grid, crop)
        lesion_crop = np.zeros(crop_lobes.shape, dtype=bool)
        for name, threshold in thresholds.items():
            inside = crop_lobes == LOBE_LABELS[name]
            lesion_crop |= inside & (probability_crop > threshold)
    else:
        channels = [to_ct_grid(tiled[channel], grid, crop) for channel in range(3)]
        probability_crop = channels[2]
        lesion_crop = (channels[2] > np.maximum(channels[0], channels[1])) & (crop_lobes > 0)
    probability_crop = np.where(crop_lobes > 0, probability_crop, 0.0)

    full_lobes = sitk.GetArrayFromImage(ct_lobes_image)
    probability = np.zeros(full_lobes.shape, dtype=np.float32)
    lesion = np.zeros(full_lobes.shape, dtype=np.uint8)
    start = [int(v) for v in box["start_index_xyz"]][::-1]
    region = tuple(slice(a, a + n) for a, n in zip(start, crop_lobes.shape))
    probability[region] = probability_crop
    lesion[region] = lesion_crop
    outputs = {"probability": arguments.out_probability, "lesion": arguments.out_lesion, "table": arguments.out_table, "severity": arguments.out_severity}
    write_outputs(scan_id, arguments.method, probability, lesion, ct_lobes_image, full_lobes, settings, outputs)
    log.info("scan %s: method %s, %d lesion voxels, done in %.1f s", scan_id, arguments.method, int(lesion.sum()), time.perf_counter() - started)


def postprocess_scan(arguments) -> None:
    """Keep only lesion voxels inside the candidate lesions ("-p" methods)."""
    record = io.read_json(arguments.record)
    scan_id = record["scan_id"]
    lobes_image = sitk.ReadImage(arguments.lobes)
    lobes_zyx = sitk.GetArrayFromImage(lobes_image)
    candidates_image = sitk.ReadImage(arguments.candidates)
    candidates = sitk.Resample(candidates_image, lobes_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, candidates_image.GetPixelID())
    candidates_zyx = sitk.GetArrayFromImage(candidates) > 0
    lesion_zyx = sitk.GetArrayFromImage(sitk.ReadImage(arguments.lesion)) > 0
    probability_zyx = sitk.GetArrayFromImage(sitk.ReadImage(arguments.probability))
    if lesion_zyx.shape != lobes_zyx.shape:
        raise input_error(scan_id, arguments.lesion, f"lesion mask shape {lesion_zyx.shape} differs from the lobe map's {lobes_zyx.shape}", "Rerun inference")
    kept = lesion_zyx & candidates_zyx
    log.info("scan %s: post-processing keeps %d of %d lesion voxels", scan_id, int(kept.sum()), int(lesion_zyx.sum()))
    outputs = {"probability": arguments.out_probability, "lesion": arguments.out_lesion, "table": arguments.out_table, "severity": arguments.out_severity}
    write_outputs(scan_id, arguments.method, np.where(candidates_zyx, probability_zyx, 0.0), kept, lobes_image, lobes_zyx, arguments.settings, outputs)


def tabulate_severity(arguments) -> None:
    """Collect severity reports of many scans into one CSV (apply mode)."""
    rows = []
    for path in arguments.reports:
        report = io.read_json(path)
        row = {"scan_id": report["scan_id"], "method": report["method"], "total_severity_score": report["total_severity_score"]}
        for name in LOBE_NAMES:
            lobe = report["lobes"].get(name)
            row[f"{name}_lesion_percent"] = lobe["lesion_percent"] if lobe else np.nan
            row[f"{name}_score"] = lobe["score"] if lobe else np.nan
        row["lesion_percent_of_lungs"] = report["lesion_percent_of_lungs"]
        row["missing_lobes"] = " ".join(report["missing_lobes"])
        rows.append(row)
    io.write_csv(pd.DataFrame(rows), arguments.out)


def _add_outputs(parser) -> None:
    parser.add_argument("--method", required=True, help="method name written into the reports")
    parser.add_argument("--record", required=True, help="results/scans/{scan}/record.json")
    parser.add_argument("--lobes", required=True, help="lobe map on the CT grid (results/lobes/{scan}/lobes.nii.gz)")
    parser.add_argument("--out-probability", required=True)
    parser.add_argument("--out-lesion", required=True)
    parser.add_argument("--out-table", required=True)
    parser.add_argument("--out-severity", required=True)
    add_settings_argument(parser)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Scan-level inference and post-processing")
    commands = parser.add_subparsers(dest="command", required=True)
    scan = commands.add_parser("scan", help="run a trained model on one scan")
    _add_outputs(scan)
    scan.add_argument("--model", required=True, help="model.pt")
    scan.add_argument("--store", required=True, help="results/chunks/{scan}/chunks.h5")
    scan.add_argument("--box", required=True, help="results/resample/{scan}/box.json")
    scan.add_argument("--resampled-lobes", required=True, help="results/resample/{scan}/lobes.nii.gz")
    scan.add_argument("--threads", type=int, default=1)
    post = commands.add_parser("postprocess", help="keep only voxels inside candidate lesions")
    _add_outputs(post)
    post.add_argument("--lesion", required=True)
    post.add_argument("--probability", required=True)
    post.add_argument("--candidates", required=True, help="results/candidates/{scan}/candidates.nii.gz")
    table = commands.add_parser("severity-table", help="collect severity reports into one CSV")
    table.add_argument("--reports", nargs="+", required=True)
    table.add_argument("--out", required=True)
    arguments = parser.parse_args(argv)
    configure_logging()
    {"scan": infer_scan, "postprocess": postprocess_scan, "severity-table": tabulate_severity}[arguments.command](arguments)


if __name__ == "__main__":
    main()
