"""Build the demo cohort: sources (real CT, lungs, approximate lobes), synthetic variants, cohort table.

Usage:
    python -m dramseg.demo.build source --source lungdx --input resources/downloads/<wheel> \
        --out-ct ct.nii.gz --out-lungs lungs.nii.gz --out-lobes lobes.nii.gz --out-picture coronal.png \
        --settings JSON
    python -m dramseg.demo.build variant --scan lungdx_v00 --seed 0 --in-ct ... --in-lobes ... \
        --out-ct ... --out-lobes ... --out-reference ... --out-truth ... --settings JSON
    python -m dramseg.demo.build cohort --truth a/truth.json b/truth.json --out-cohort cohort.csv --settings JSON
    python -m dramseg.demo.build picture --ct ... --lobes ... --reference ... --out-dir docs/images

The settings JSON contains the config sections `demo` and `chunks`.
"""

from __future__ import annotations

import argparse
import re
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from dramseg import io
from dramseg.anatomy import LOBE_LABELS, LOBE_NAMES, SCORE_ORDER
from dramseg.demo import deform, lesions, lungs, partition, plan
from dramseg.demo.fetch import extract_dicom
from dramseg.demo.pictures import save_coronal_check, save_variant_pictures
from dramseg.errors import input_error
from dramseg.intervals import parse_score_intervals
from dramseg.settings import add_settings_argument, configure_logging

LOGGER = logging.getLogger(__name__)

HU_RANGE = (-1024.0, 3071.0)
# Grid on which the lungs are first found to place the crop, mm (x, y, z).
COARSE_SPACING_MM = (2.0, 2.0, 2.5)
COHORT_COLUMNS = [
    "scan_id", "ct", "lobes", "lobe_convention", "split",
    *[f"score_{name}" for name in SCORE_ORDER], "corads", "reference",
]  # fmt: skip


# ---------------------------------------------------------------- reading and grids


def read_ct(kind: str, path: Path, wheel_dicom_dir: str | None = None) -> sitk.Image:
    """Read a source CT as float32 HU clamped to [-1024, 3071] (padding such as -3024 becomes air).

    kind: "wheel" (DICOM files inside the wheel's `wheel_dicom_dir`), "dicom"
    (a folder with one DICOM series) or "file" (any image file SimpleITK reads).
    """
    path = Path(path)
    if not path.exists():
        raise input_error(None, path, f"demo source ({kind}) not found", "Check demo.sources in config.yaml")
    if kind == "wheel":
        with tempfile.TemporaryDirectory() as folder:
            extract_dicom(path, wheel_dicom_dir, Path(folder))
            image = _read_dicom_series(Path(folder))
    elif kind == "dicom":
        image = _read_dicom_series(path)
    else:
        image = sitk.ReadImage(str(path))
    image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.Clamp(image, sitk.sitkFloat32, *HU_RANGE)


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        raise input_error(
            None, folder, f"expected one DICOM series, found {len(series)}", "Point the demo source at one series"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def resample_to_spacing(image: sitk.Image, spacing_xyz_mm, interpolator=sitk.sitkLinear) -> sitk.Image:
    """Resample an image over its own extent to a new spacing (mm, x y z); None keeps it."""
    if spacing_xyz_mm is None:
        return image
    spacing_xyz_mm = [float(value) for value in spacing_xyz_mm]
    size = [
        max(1, int(round(count * old / new)))
        for count, old, new in zip(image.GetSize(), image.GetSpacing(), spacing_xyz_mm)
    ]
    return sitk.Resample(
        image, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing_xyz_mm, image.GetDirection(),
        HU_RANGE[0] if interpolator == sitk.sitkLinear else 0, image.GetPixelID(),
    )  # fmt: skip


def crop_grid(image: sitk.Image, mask_zyx: np.ndarray, margin_mm: float, spacing_xyz_mm) -> sitk.Image:
    """Return an empty image: the grid over the mask's bounding box plus `margin_mm`, inside the image.

    The grid keeps the image's direction and takes `spacing_xyz_mm` (None
    keeps the image's spacing).
    """
    indices = np.nonzero(mask_zyx)
    spacing_old = np.array(image.GetSpacing())
    spacing_new = spacing_old if spacing_xyz_mm is None else np.array(spacing_xyz_mm, dtype=float)
    margin = np.ceil(margin_mm / spacing_old).astype(int)
    low_xyz = np.array([indices[2].min(), indices[1].min(), indices[0].min()]) - margin
    high_xyz = np.array([indices[2].max(), indices[1].max(), indices[0].max()]) + margin
    low_xyz = np.maximum(low_xyz, 0)
    high_xyz = np.minimum(high_xyz, np.array(image.GetSize()) - 1)
    origin = image.TransformIndexToPhysicalPoint([int(value) for value in low_xyz])
    extent_mm = (high_xyz - low_xyz + 1) * spacing_old
    size = [max(1, int(round(value))) for value in extent_mm / spacing_new]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing_new.tolist())
    grid.SetOrigin(origin)
    grid.SetDirection(image.GetDirection())
    return grid


def resample_onto(image: sitk.Image, grid: sitk.Image, labels: bool) -> sitk.Image:
    """Resample onto another grid: nearest neighbour for labels, linear (outside = air) for CT."""
    if labels:
        return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, HU_RANGE[0], sitk.sitkFloat32)


def image_like(array_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap an array in an image with the reference's spacing, origin and direction."""
    image = sitk.GetImageFromArray(array_zyx)
    image.CopyInformation(reference)
    return image


def to_int16_hu(ct: sitk.Image) -> sitk.Image:
    """Round a float CT to int16 HU."""
    array_zyx = np.rint(np.clip(sitk.GetArrayViewFromImage(ct), *HU_RANGE)).astype(np.int16)
    return image_like(array_zyx, ct)


def mark_approximate(lobes: sitk.Image) -> sitk.Image:
    """Store the approximation note in the NIfTI description field (`descrip`) of a lobe map.

    ITK's NIfTI writer fills `descrip` from the `ITK_FileNotes` entry, and the field is at most 79 characters long.
    """
    lobes.SetMetaData("ITK_FileNotes", partition.APPROXIMATION_NOTE[:79])
    return lobes


# ---------------------------------------------------------------- sources


def build_source(source: dict, input_path: Path, demo_config: dict) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Return the source's CT (float32 HU), lungs (uint8 1 right, 2 left) and approximate lobes (uint8 DIAG).

    A synthetic source is cropped to its lungs plus `demo.crop_margin_mm` and
    resampled to `demo.spacing_mm`. A real test source keeps its own grid; its
    lungs are found at `demo.spacing_mm` and resampled back with nearest neighbour.
    """
    started = time.perf_counter()
    original = read_ct(source["kind"], input_path, demo_config["wheel"]["dicom_dir"])
    LOGGER.info(
        "source %s: read %s, size %s, spacing %s mm",
        source["name"], input_path, original.GetSize(), tuple(round(value, 3) for value in original.GetSpacing()),
    )  # fmt: skip
    spacing = demo_config.get("spacing_mm")

    if source["role"] == plan.REAL_TEST:
        working = resample_to_spacing(original, spacing)
        lungs_working = image_like(_segment(working, source["name"], input_path), working)
        lungs_image = resample_onto(lungs_working, original, labels=True)
        ct = original
    else:
        coarse = resample_to_spacing(original, COARSE_SPACING_MM)
        lungs_coarse_zyx = _segment(coarse, source["name"], input_path)
        grid = crop_grid(coarse, lungs_coarse_zyx > 0, float(demo_config["crop_margin_mm"]), spacing or original.GetSpacing())
        ct = resample_onto(original, grid, labels=False)
        lungs_image = image_like(_segment(ct, source["name"], input_path), ct)

    lungs_zyx = sitk.GetArrayFromImage(lungs_image)
    lobes_zyx = partition.partition_lobes(lungs_zyx, lungs_image)
    lobes = mark_approximate(image_like(lobes_zyx, lungs_image))
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    volumes = {name: round(float((lobes_zyx == label).sum()) * voxel_ml, 1) for name, label in LOBE_LABELS.items()}
    LOGGER.info("source %s: %s; lobe volumes (ml) %s", source["name"], partition.APPROXIMATION_NOTE, volumes)
    LOGGER.info("source %s: built in %.1f s, grid %s", source["name"], time.perf_counter() - started, ct.GetSize())
    return ct, lungs_image, lobes


def _segment(ct: sitk.Image, name: str, path: Path) -> np.ndarray:
    try:
        return lungs.segment_lungs(ct)
    except ValueError as error:
        raise input_error(name, path, f"lung segmentation failed: {error}", "Check that the source is a chest CT in HU")


# ---------------------------------------------------------------- variants


def build_variant(
    entry: dict, seed: int, ct: sitk.Image, lobes: sitk.Image, demo_config: dict, chunks_config: dict
) -> tuple[sitk.Image, sitk.Image, sitk.Image, dict]:
    """Deform a source and paint lesions; return CT (float32 HU), lobes, reference and the truth record.

    The variant index picks one lobe (SCORE_ORDER[variant % 5]) whose target
    score is variant % 6, so every score 0-5 occurs once a source has six
    variants. The other lobes draw their score from `demo.lesions.score_probabilities`.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    deformation = demo_config["deformation"]
    transform = deform.random_deformation(
        ct, float(deformation["max_displacement_mm"]), float(deformation["smoothness_mm"]), rng
    )
    ct_warped = deform.warp_ct(ct, transform)
    lobes_warped = deform.warp_labels(sitk.Cast(lobes, sitk.sitkUInt8), transform)
    lobes_zyx = sitk.GetArrayFromImage(lobes_warped)
    missing = [name for name, label in LOBE_LABELS.items() if not (lobes_zyx == label).any()]
    if missing:
        raise input_error(entry["scan_id"], None, f"lobes {missing} vanished in the deformation", "Lower demo.deformation.max_displacement_mm")
    deformed_s = time.perf_counter() - started

    settings = demo_config["lesions"]
    intervals = parse_score_intervals(chunks_config["score_intervals"])
    variant = int(entry["variant"])
    forced = (SCORE_ORDER[variant % len(SCORE_ORDER)], variant % (max(intervals) + 1))
    target_scores = lesions.draw_scores(rng, settings["score_probabilities"], forced)
    targets = {name: lesions.draw_fraction(target_scores[name], intervals, rng) for name in LOBE_NAMES}

    spacing_zyx_mm = ct.GetSpacing()[::-1]
    ct_zyx = sitk.GetArrayFromImage(ct_warped)
    lesioned_zyx, reference_zyx, achieved, subtype_voxels = lesions.synthesize_lesions(
        ct_zyx, lobes_zyx, spacing_zyx_mm, targets, settings, rng
    )
    true_scores = lesions.scores_from_fractions(achieved, intervals)
    scores = lesions.apply_rater_errors(true_scores, float(settings["rater_error_rate"]), max(intervals), rng)
    truth = {
        "scan_id": entry["scan_id"],
        "source": entry["source"],
        "variant": variant,
        "role": entry["role"],
        "seed": int(seed),
        "lobes_note": partition.APPROXIMATION_NOTE,
        "target_fractions": {name: round(targets[name], 6) for name in LOBE_NAMES},
        "lobe_fractions": {name: round(achieved[name], 6) for name in LOBE_NAMES},
        "true_scores": true_scores,
        "scores": scores,
        "subtype_voxels": subtype_voxels,
        "corads": lesions.corads_from_lesions(achieved, subtype_voxels),
    }
    LOGGER.info(
        "variant %s: deformation %.1f s, total %.1f s, fractions %s, scores %s",
        entry["scan_id"], deformed_s, time.perf_counter() - started, truth["lobe_fractions"], scores,
    )  # fmt: skip
    return (
        image_like(lesioned_zyx, ct_warped),
        mark_approximate(lobes_warped),
        image_like(reference_zyx, ct_warped),
        truth,
    )


# ---------------------------------------------------------------- cohort table


def cohort_table(demo_config: dict, entries: list[dict], truths: dict[str, dict]) -> pd.DataFrame:
    """Return the cohort table of the planned scans, one row each, in plan order.

    Raises PipelineInputError when a synthetic scan has no truth record.
    """
    rows = []
    for entry in entries:
        paths = plan.demo_paths(demo_config, entry["scan_id"])
        row = {
            "scan_id": entry["scan_id"],
            "ct": paths["ct"],
            "lobes": paths["lobes"],
            "lobe_convention": "diag",
            "split": entry["split"],
            "corads": "",
            "reference": paths["reference"] or "",
        }
        for name in SCORE_ORDER:
            row[f"score_{name}"] = ""
        if entry["role"] == plan.SYNTHETIC:
            if entry["scan_id"] not in truths:
                raise input_error(entry["scan_id"], paths["truth"], "no truth record given", "Build the variant first")
            truth = truths[entry["scan_id"]]
            for name in SCORE_ORDER:
                row[f"score_{name}"] = int(truth["scores"][name])
            row["corads"] = int(truth["corads"])
        rows.append(row)
    return pd.DataFrame(rows, columns=COHORT_COLUMNS)


# ---------------------------------------------------------------- entry point


def _variant_entry(scan_id: str) -> dict:
    """Read the source and variant number from a variant's scan id, `{source}_v{variant:02d}`.

    The variant does not look up the plan, so that adding variants or
    changing the split settings does not rebuild existing variants.
    """
    match = re.fullmatch(r"(?P<source>[A-Za-z0-9]+)_v(?P<variant>[0-9]+)", scan_id)
    if match is None:
        raise input_error(scan_id, None, "not a demo variant id of the form {source}_v{NN}", "Check the scan id")
    return {"scan_id": scan_id, "source": match["source"], "variant": int(match["variant"]), "role": plan.SYNTHETIC}


def _find_source(demo_config: dict, name: str) -> dict:
    for source in demo_config["sources"]:
        if source["name"] == name:
            return source
    raise input_error(name, None, "not a source in demo.sources", "Check the source name")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    source_parser = commands.add_parser("source", help="build a source's CT, lungs and approximate lobes")
    source_parser.add_argument("--source", required=True, help="source name in demo.sources")
    source_parser.add_argument("--input", type=Path, required=True, help="wheel, image file or DICOM folder")
    for name in ("ct", "lungs", "lobes", "picture"):
        source_parser.add_argument(f"--out-{name}", type=Path, required=True)

    variant_parser = commands.add_parser("variant", help="build one synthetic variant")
    variant_parser.add_argument("--scan", required=True, help="scan id, {source}_v{variant:02d}")
    variant_parser.add_argument("--seed", type=int, required=True, help="the config's seed")
    variant_parser.add_argument("--in-ct", type=Path, required=True)
    variant_parser.add_argument("--in-lobes", type=Path, required=True)
    for name in ("ct", "lobes", "reference", "truth"):
        variant_parser.add_argument(f"--out-{name}", type=Path, required=True)

    cohort_parser = commands.add_parser("cohort", help="write the cohort table")
    cohort_parser.add_argument("--truth", type=Path, nargs="*", default=[], help="truth.json of every variant")
    cohort_parser.add_argument("--out-cohort", type=Path, required=True)

    picture_parser = commands.add_parser("picture", help="draw coronal pictures of one variant for the docs")
    for name in ("ct", "lobes", "reference"):
        picture_parser.add_argument(f"--{name}", type=Path, required=True)
    picture_parser.add_argument("--out-dir", type=Path, required=True)

    for sub in (source_parser, variant_parser, cohort_parser, picture_parser):
        add_settings_argument(sub)
    arguments = parser.parse_args(argv)
    configure_logging()
    demo_config = arguments.settings.get("demo", {})

    if arguments.command == "source":
        source = _find_source(demo_config, arguments.source)
        ct, lungs_image, lobes = build_source(source, arguments.input, demo_config)
        io.write_image(to_int16_hu(ct), arguments.out_ct)
        io.write_image(lungs_image, arguments.out_lungs)
        io.write_image(lobes, arguments.out_lobes)
        with io.atomic_path(arguments.out_picture) as temporary:
            save_coronal_check(ct, lobes, temporary, title=f"{source['name']}: approximate lobes")
    elif arguments.command == "variant":
        entry = _variant_entry(arguments.scan)
        seed = plan.variant_seed(arguments.seed, entry["scan_id"])
        ct = sitk.Cast(sitk.ReadImage(str(arguments.in_ct)), sitk.sitkFloat32)
        lobes = sitk.ReadImage(str(arguments.in_lobes))
        ct_out, lobes_out, reference, truth = build_variant(
            entry, seed, ct, lobes, demo_config, arguments.settings["chunks"]
        )
        io.write_image(to_int16_hu(ct_out), arguments.out_ct)
        io.write_image(lobes_out, arguments.out_lobes)
        io.write_image(reference, arguments.out_reference)
        io.write_json(truth, arguments.out_truth)
    elif arguments.command == "cohort":
        truths = {}
        for path in arguments.truth:
            record = io.read_json(path)
            truths[record["scan_id"]] = record
        entries = plan.plan_cohort(demo_config, Path.cwd())
        table = cohort_table(demo_config, entries, truths)
        io.write_csv(table, arguments.out_cohort)
        LOGGER.info("cohort table %s: %d scans, splits %s", arguments.out_cohort, len(table), table["split"].value_counts().to_dict())
    else:
        save_variant_pictures(
            sitk.ReadImage(str(arguments.ct)),
            sitk.ReadImage(str(arguments.lobes)),
            sitk.ReadImage(str(arguments.reference)),
            arguments.out_dir,
        )


if __name__ == "__main__":
    main()
