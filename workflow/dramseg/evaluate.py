"""Per-scan segmentation and severity metrics, and the comparison and ablation tables.

Subcommands:
  scan      metrics of one method's prediction on one scan -> results/evaluate/{method}/{scan}.json
  table     per-scan table and the per-method summary laid out like Xie et al.'s Table II
  ablation  the per-method DSC, lobe accuracy and complexity with the ER / REF / AT flags (Table III)

Metrics are defined in dramseg.metrics; units and empty-mask cases are in docs/metrics.md.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk

from dramseg import anatomy, io, metrics, settings as settings_module
from dramseg.errors import input_error
from dramseg.intervals import parse_score_intervals

LOG = logging.getLogger("dramseg.evaluate")

# Per-scan JSON key, table column and the factor from the stored value to the column's unit.
METRIC_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("dsc", "dsc_pct", 100.0),
    ("apd", "apd_pct", 100.0),
    ("svrd", "svrd_per_mm", 1.0),
    ("fdr", "fdr_pct", 100.0),
    ("tpr", "tpr_pct", 100.0),
    ("tpr_ggo", "tpr_ggo_pct", 100.0),
    ("tpr_consolidation", "tpr_consolidation_pct", 100.0),
    ("tpr_mixed", "tpr_mixed_pct", 100.0),
)
NO_REFERENCE_NOTE = "no reference mask; metrics skipped"
POSTPROCESSED_SUFFIX = "-p"


# ---------------------------------------------------------------- reading and checking inputs


def read_image(scan_id: str, path, role: str) -> sitk.Image:
    """Read an image file, raising PipelineInputError with the scan and file when that fails."""
    if not Path(path).is_file():
        raise input_error(scan_id, path, f"the {role} file was not found", f"Check the path of the {role}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise input_error(
            scan_id, path, f"reading the {role} failed ({error})", "Give a NIfTI, MHA or NRRD image"
        ) from error


def _geometry(image: sitk.Image) -> dict[str, list]:
    return {
        "size_xyz": list(image.GetSize()),
        "spacing_xyz_mm": [round(value, 6) for value in image.GetSpacing()],
        "origin_xyz_mm": [round(value, 6) for value in image.GetOrigin()],
        "direction": [round(value, 6) for value in image.GetDirection()],
    }


def check_same_grid(
    scan_id: str,
    expected: tuple[str, object, sitk.Image],
    found: tuple[str, object, sitk.Image],
    tolerance_mm: float,
    direction_tolerance: float,
) -> None:
    """Raise PipelineInputError unless two images lie on the same voxel grid.

    expected, found: (name, path, image). Sizes must be equal. Spacing and
    origin may differ by at most tolerance_mm per axis and the direction
    cosines by at most direction_tolerance. The message prints both grids.
    """
    expected_name, expected_path, expected_image = expected
    found_name, found_path, found_image = found
    differences = []
    if expected_image.GetSize() != found_image.GetSize():
        differences.append("size")
    if np.max(np.abs(np.subtract(expected_image.GetSpacing(), found_image.GetSpacing()))) > tolerance_mm:
        differences.append("spacing")
    if np.max(np.abs(np.subtract(expected_image.GetOrigin(), found_image.GetOrigin()))) > tolerance_mm:
        differences.append("origin")
    if np.max(np.abs(np.subtract(expected_image.GetDirection(), found_image.GetDirection()))) > direction_tolerance:
        differences.append("direction")
    if not differences:
        return
    raise input_error(
        scan_id,
        found_path,
        f"the {found_name} is not on the grid of the {expected_name} ({str(expected_path)!r}); "
        f"{', '.join(differences)} differ beyond {tolerance_mm} mm / {direction_tolerance} (direction). "
        f"{expected_name}: {_geometry(expected_image)}; {found_name}: {_geometry(found_image)}",
        f"Resample the {found_name} onto the CT grid with nearest-neighbour interpolation before evaluating",
    )


def label_array(scan_id: str, path, image: sitk.Image, role: str) -> np.ndarray:
    """Return the z, y, x array of a label image after rejecting non-integer or negative values."""
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise input_error(
                scan_id,
                path,
                f"the {role} contains non-integer values (range {float(np.nanmin(array))} to {float(np.nanmax(array))}), "
                "so it looks like a probability map",
                f"Give the binary or label {role}, not a probability or activation map",
            )
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise input_error(
            scan_id, path, f"the {role} contains negative labels (minimum {int(array.min())})", "Labels must be 0 or above"
        )
    return array


def lobe_array(scan_id: str, path, image: sitk.Image) -> np.ndarray:
    """Return the z, y, x lobe map after rejecting labels outside 0..5 and an empty map."""
    lobes = label_array(scan_id, path, image, "lobe map")
    allowed = {0, *anatomy.LOBE_LABELS.values()}
    unknown = sorted(set(np.unique(lobes).tolist()) - allowed)
    if unknown:
        raise input_error(
            scan_id,
            path,
            f"the lobe map contains labels {unknown}, expected only {sorted(allowed)} (internal labels)",
            "Evaluate with the lobe map written by the lobes stage (results/lobes/{scan}/lobes.nii.gz)",
        )
    if not np.any(lobes):
        raise input_error(scan_id, path, "the lobe map is empty", "Check the lobes stage output of this scan")
    return lobes


def read_lobe_table_scores(scan_id: str, path, top_score: int) -> dict[str, int]:
    """Read the `lobe` and `score` columns of a per-lobe table (infer stage's lobes.csv)."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise input_error(scan_id, path, f"reading the lobe table failed ({error})", "Rerun the infer stage") from error
    missing = {"lobe", "score"} - set(table.columns)
    if missing:
        raise input_error(
            scan_id, path, f"the lobe table lacks the columns {sorted(missing)}", "Rerun the infer stage"
        )
    scores = {}
    for lobe, score in zip(table["lobe"], table["score"]):
        if lobe not in anatomy.LOBE_LABELS:
            raise input_error(
                scan_id, path, f"unknown lobe {lobe!r}, expected one of {list(anatomy.LOBE_NAMES)}", "Rerun the infer stage"
            )
        scores[lobe] = _checked_score(scan_id, path, lobe, score, top_score)
    return scores


def _checked_score(scan_id: str, path, lobe: str, score, top_score: int) -> int:
    if isinstance(score, (bool, np.bool_)) or not float(score).is_integer() or not 0 <= float(score) <= top_score:
        raise input_error(
            scan_id,
            path,
            f"the score of lobe {lobe!r} is {score!r}, expected an integer from 0 to {top_score}",
            "Fix the score",
        )
    return int(score)


def reference_scores_from_record(scan_id: str, path, record: Mapping, top_score: int) -> dict[str, int] | None:
    """Return the record's per-lobe reference scores without lobes scored null, or None without scores."""
    scores = record.get("scores")
    if scores is None:
        return None
    if not isinstance(scores, Mapping):
        raise input_error(scan_id, path, f"`scores` is {scores!r}, expected an object lobe -> score", "Rerun the scans stage")
    checked = {}
    for lobe, score in scores.items():
        if lobe not in anatomy.LOBE_LABELS:
            raise input_error(
                scan_id, path, f"unknown lobe {lobe!r} in `scores`, expected {list(anatomy.LOBE_NAMES)}", "Rerun the scans stage"
            )
        if score is not None:
            checked[lobe] = _checked_score(scan_id, path, lobe, score, top_score)
    return checked


# ---------------------------------------------------------------- per-scan metrics


def voxel_metrics(
    prediction: np.ndarray,
    reference_labels: np.ndarray,
    lung: np.ndarray,
    spacing_xyz_mm: Sequence[float],
    surface_method: str,
    reference_subtypes: bool,
) -> dict[str, float]:
    """Compute DSC, APD, SVRD, FDR, TPR and per-subtype TPR of one scan.

    prediction, lung: boolean z, y, x masks; reference_labels: integer z, y, x
    array, lesion where above 0. With reference_subtypes false the per-subtype
    rates are NaN, because labels 1-3 then do not mean subtypes.
    Returns fractions, and SVRD in 1/mm.
    """
    reference = reference_labels > 0
    values = {
        "dsc": metrics.dice(prediction, reference),
        "apd": metrics.absolute_percentage_difference(prediction, reference, lung),
        "svrd": metrics.surface_volume_ratio_difference(prediction, reference, spacing_xyz_mm, surface_method),
        "fdr": metrics.false_discovery_rate(prediction, reference),
        "tpr": metrics.true_positive_rate(prediction, reference),
    }
    if reference_subtypes:
        subtype_rates = metrics.subtype_true_positive_rates(prediction, reference_labels)
    else:
        subtype_rates = {name: float("nan") for name in anatomy.SUBTYPES.values()}
    for name, rate in subtype_rates.items():
        values[f"tpr_{name}"] = rate
    return values


def evaluate_scan(
    scan_id: str,
    method: str,
    prediction: np.ndarray,
    lobes: np.ndarray,
    reference_labels: np.ndarray | None,
    spacing_xyz_mm: Sequence[float],
    reference_scores: Mapping[str, int] | None,
    predicted_scores: Mapping[str, int] | None,
    evaluation_settings: Mapping,
    intervals: Mapping[int, tuple[float, float]],
) -> dict:
    """Return the per-scan result dictionary written to results/evaluate/{method}/{scan}.json.

    prediction: boolean z, y, x lesion mask. lobes: z, y, x internal lobe
    labels, whose union is the lung. reference_labels: z, y, x subtype labels,
    or None for a scan without a reference mask, which then gets NaN metrics
    and a note. When predicted_scores is None, the scores are computed here
    from the prediction and the lobe map. Voxel metrics are fractions, SVRD is
    in 1/mm and volumes are in ml.
    """
    voxel_ml = float(np.prod(spacing_xyz_mm)) / 1000.0
    lung = lobes > 0
    fractions = metrics.lobe_scores(prediction, lobes, spacing_xyz_mm, intervals)
    if predicted_scores is None:
        predicted_scores = {lobe: score for lobe, (_, score) in fractions.items()}

    result = {
        "scan_id": scan_id,
        "method": method,
        "surface_method": evaluation_settings["surface_method"],
        "lung_volume_ml": float(np.count_nonzero(lung)) * voxel_ml,
        "prediction_volume_ml": float(np.count_nonzero(prediction)) * voxel_ml,
        "predicted_fractions": {lobe: fraction for lobe, (fraction, _) in fractions.items()},
        "predicted_scores": dict(predicted_scores),
        "reference_scores": None if reference_scores is None else dict(reference_scores),
    }
    if reference_labels is None:
        LOG.info("scan %s has no reference mask; voxel metrics skipped", scan_id)
        result.update({key: float("nan") for key, _, _ in METRIC_COLUMNS})
        result.update({"reference_volume_ml": float("nan"), "note": NO_REFERENCE_NOTE})
        return result

    result.update(
        voxel_metrics(
            prediction,
            reference_labels,
            lung,
            spacing_xyz_mm,
            evaluation_settings["surface_method"],
            evaluation_settings["reference_subtypes"],
        )
    )
    result["reference_volume_ml"] = float(np.count_nonzero(reference_labels)) * voxel_ml
    result["note"] = None
    return result


def _json_ready(value):
    # JSON has no NaN; undefined metrics are written as null.
    if isinstance(value, Mapping):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def run_scan(arguments: argparse.Namespace) -> None:
    """Read one scan's files, evaluate them and write the per-scan JSON."""
    evaluation_settings = arguments.settings["evaluation"]
    intervals = parse_score_intervals(arguments.settings["chunks"]["score_intervals"])
    top_score = max(intervals)
    scan_id = arguments.scan_id
    tolerance_mm = float(evaluation_settings["geometry_tolerance_mm"])
    direction_tolerance = float(evaluation_settings["direction_tolerance"])

    record = io.read_json(arguments.record)
    if record.get("scan_id") != scan_id:
        raise input_error(
            scan_id, arguments.record, f"the record is for scan {record.get('scan_id')!r}", "Pass the record of this scan"
        )

    lobes_image = read_image(scan_id, arguments.lobes, "lobe map")
    prediction_image = read_image(scan_id, arguments.prediction, "prediction")
    lobes_entry = ("lobe map", arguments.lobes, lobes_image)
    check_same_grid(scan_id, lobes_entry, ("prediction", arguments.prediction, prediction_image), tolerance_mm, direction_tolerance)
    lobes = lobe_array(scan_id, arguments.lobes, lobes_image)
    prediction = label_array(scan_id, arguments.prediction, prediction_image, "prediction") > 0

    reference_path = record.get("reference")
    reference_labels = None
    if reference_path is not None:
        reference_image = read_image(scan_id, reference_path, "reference mask")
        check_same_grid(
            scan_id, lobes_entry, ("reference mask", reference_path, reference_image), tolerance_mm, direction_tolerance
        )
        reference_labels = label_array(scan_id, reference_path, reference_image, "reference mask")
        _warn_unknown_subtypes(scan_id, reference_labels)

    predicted_scores = None
    if arguments.lobe_table is not None:
        predicted_scores = read_lobe_table_scores(scan_id, arguments.lobe_table, top_score)
    else:
        LOG.info("no lobe table given; scoring lobes from the prediction and the lobe map")
    reference_scores = reference_scores_from_record(scan_id, arguments.record, record, top_score)

    result = evaluate_scan(
        scan_id,
        arguments.method,
        prediction,
        lobes,
        reference_labels,
        lobes_image.GetSpacing(),
        reference_scores,
        predicted_scores,
        evaluation_settings,
        intervals,
    )
    result["prediction"] = str(arguments.prediction)
    result["reference"] = reference_path
    LOG.info(
        "scan %s, method %s: DSC %s, predicted scores %s",
        scan_id,
        arguments.method,
        result["dsc"],
        result["predicted_scores"],
    )
    io.write_json(_json_ready(result), arguments.out)


def _warn_unknown_subtypes(scan_id: str, reference_labels: np.ndarray) -> None:
    labels, counts = np.unique(reference_labels, return_counts=True)
    unknown = {int(label): int(count) for label, count in zip(labels, counts) if label > max(anatomy.SUBTYPES)}
    if unknown:
        LOG.warning(
            "scan %s: reference labels %s (label: voxels) are lesion but no known subtype; "
            "they count for TPR and not for any per-subtype TPR",
            scan_id,
            unknown,
        )


# ---------------------------------------------------------------- tables


def load_scan_results(paths: Sequence) -> list[dict]:
    """Read per-scan JSON files, turning null metrics into NaN and rejecting a repeated (method, scan_id)."""
    results = []
    seen = set()
    for path in paths:
        result = io.read_json(path)
        key = (result["method"], result["scan_id"])
        if key in seen:
            raise input_error(
                result["scan_id"], path, f"method {result['method']!r} is evaluated twice on this scan", "Pass each file once"
            )
        seen.add(key)
        for name, _, _ in METRIC_COLUMNS:
            if result.get(name) is None:
                result[name] = float("nan")
        results.append(result)
    return results


def load_complexity(paths: Sequence) -> dict[str, dict]:
    """Read complexity JSON files ({"method", "params", "macs_test", "macs_train"}) into {method: values}."""
    complexity = {}
    for path in paths:
        values = io.read_json(path)
        missing = {"method", "params", "macs_test", "macs_train"} - set(values)
        if missing:
            raise input_error(None, path, f"the complexity file lacks the keys {sorted(missing)}", "Rerun count_complexity")
        if values["method"] in complexity:
            raise input_error(None, path, f"a second complexity file for method {values['method']!r}", "Pass one per method")
        complexity[values["method"]] = values
    return complexity


def complexity_of(method: str, complexity: Mapping[str, Mapping]) -> Mapping | None:
    """Return the complexity of a method. A "-p" method has that of its network, because post-processing adds no MACs."""
    if method in complexity:
        return complexity[method]
    if method.endswith(POSTPROCESSED_SUFFIX):
        return complexity.get(method[: -len(POSTPROCESSED_SUFFIX)])
    return None


def lobe_score_pairs(result: Mapping) -> tuple[list[int], list[int]]:
    """Return (reference, predicted) scores of the lobes that have both, in anatomy.LOBE_NAMES order."""
    reference_scores = result.get("reference_scores") or {}
    predicted_scores = result.get("predicted_scores") or {}
    lobes = [lobe for lobe in anatomy.LOBE_NAMES if lobe in reference_scores and lobe in predicted_scores]
    return [reference_scores[lobe] for lobe in lobes], [predicted_scores[lobe] for lobe in lobes]


def per_scan_table(results: Sequence[Mapping]) -> pd.DataFrame:
    """Build one row per (method, scan): metrics in the units of their column names, volumes in ml."""
    rows = []
    for result in results:
        reference, predicted = lobe_score_pairs(result)
        row = {
            "method": result["method"],
            "scan_id": result["scan_id"],
            "has_reference": result.get("reference") is not None,
        }
        for name, column, factor in METRIC_COLUMNS:
            row[column] = result[name] * factor
        row["lung_volume_ml"] = result["lung_volume_ml"]
        row["prediction_volume_ml"] = result["prediction_volume_ml"]
        row["reference_volume_ml"] = result.get("reference_volume_ml")
        row["lobe_accuracy_pct"] = metrics.severity_accuracy(reference, predicted) * 100.0
        row["n_scored_lobes"] = len(reference)
        row["note"] = result.get("note") or ""
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_sd(values: pd.Series) -> tuple[float, float, int]:
    defined = values.dropna().astype(float)
    count = int(defined.size)
    mean = float(defined.mean()) if count else float("nan")
    # Sample standard deviation (n - 1), undefined for one scan.
    sd = float(defined.std(ddof=1)) if count > 1 else float("nan")
    return mean, sd, count


def format_mean_sd(mean: float, sd: float) -> str:
    """Format "mean ± sd" with two decimals as in Xie et al.'s tables, or only the mean when sd is undefined."""
    if math.isnan(mean):
        return ""
    if math.isnan(sd):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {sd:.2f}"


def summary_table(
    results: Sequence[Mapping],
    methods: Sequence[str],
    complexity: Mapping[str, Mapping],
    bootstrap_samples: int,
    confidence_level: float,
    seed: int,
) -> pd.DataFrame:
    """Build one row per method, in `methods` order, laid out like Table II of Xie et al.

    Voxel metrics: mean, sample SD and count of scans with a defined value,
    over scans with a reference mask (NaN values skipped). Lobe accuracy and
    linear weighted kappa pool every lobe that has both a reference and a
    predicted score, with a percentile bootstrap interval over lobes.
    """
    frame = per_scan_table(results)
    unknown = sorted(set(frame["method"]) - set(methods))
    if unknown:
        raise input_error(
            None,
            None,
            f"per-scan results of methods {unknown} are not in the requested methods {list(methods)}",
            "Pass only the result files of the requested methods, or add the methods to --methods",
        )

    rows = []
    for method in methods:
        method_results = [result for result in results if result["method"] == method]
        if not method_results:
            raise input_error(
                None, None, f"method {method!r} has no per-scan results", "Evaluate it first or drop it from the table"
            )
        method_frame = frame[frame["method"] == method]
        rows.append(
            _summary_row(method, method_results, method_frame, complexity, bootstrap_samples, confidence_level, seed)
        )
    summary = pd.DataFrame(rows)
    for column in ("n_scans", "n_without_reference", "n_lobes", "macs_test", "macs_train", "params"):
        summary[column] = summary[column].astype("Int64")
    return summary


def _summary_row(method, method_results, method_frame, complexity, bootstrap_samples, confidence_level, seed) -> dict:
    with_reference = method_frame[method_frame["has_reference"]]
    without_reference = int((~method_frame["has_reference"]).sum())
    row = {"method": method, "n_scans": len(method_frame), "n_without_reference": without_reference}
    for _, column, _ in METRIC_COLUMNS:
        mean, sd, count = _mean_sd(with_reference[column])
        row[f"{column}_mean"] = mean
        row[f"{column}_sd"] = sd
        row[f"{column}_n"] = count

    reference_scores, predicted_scores = [], []
    for result in method_results:
        reference, predicted = lobe_score_pairs(result)
        reference_scores.extend(reference)
        predicted_scores.extend(predicted)
    row["n_lobes"] = len(reference_scores)
    row["lobe_accuracy_pct"] = metrics.severity_accuracy(reference_scores, predicted_scores) * 100.0
    row["kappa"] = metrics.linear_weighted_kappa(reference_scores, predicted_scores)
    row["kappa_ci_low"], row["kappa_ci_high"] = metrics.bootstrap_kappa_interval(
        reference_scores, predicted_scores, bootstrap_samples, confidence_level, seed
    )

    values = complexity_of(method, complexity) or {}
    for key in ("macs_test", "macs_train", "params"):
        row[key] = values.get(key)
    row["DSC (%)"] = format_mean_sd(row["dsc_pct_mean"], row["dsc_pct_sd"])
    row["note"] = (
        f"{without_reference} scan(s) without reference mask excluded from voxel metrics" if without_reference else ""
    )
    return row


def ablation_table(summary: pd.DataFrame, methods: Sequence[str], method_settings: Mapping[str, Mapping]) -> pd.DataFrame:
    """Build Table III: ER, REF, AT flags (1 or 0) of each method, its DSC, lobe accuracy and complexity."""
    rows = []
    for method in methods:
        base = method[: -len(POSTPROCESSED_SUFFIX)] if method.endswith(POSTPROCESSED_SUFFIX) else method
        if base not in method_settings:
            raise input_error(
                None,
                None,
                f"ablation method {method!r} is not in the config's `methods` ({sorted(method_settings)})",
                "Add it to `methods` or remove it from `evaluation.ablation`",
            )
        flags = method_settings[base]
        values = summary.loc[summary["method"] == method].iloc[0]
        rows.append(
            {
                "ER": int(bool(flags.get("er", False))),
                "REF": int(bool(flags.get("ref", False))),
                "AT": int(bool(flags.get("attention", False))),
                "method": method,
                "DSC (%)": values["DSC (%)"],
                "dsc_pct_mean": values["dsc_pct_mean"],
                "dsc_pct_sd": values["dsc_pct_sd"],
                "lobe_accuracy_pct": values["lobe_accuracy_pct"],
                "macs_test": values["macs_test"],
                "macs_train": values["macs_train"],
                "params": values["params"],
            }
        )
    table = pd.DataFrame(rows)
    for column in ("macs_test", "macs_train", "params"):
        table[column] = table[column].astype("Int64")
    return table


def _summary_from_arguments(arguments: argparse.Namespace) -> tuple[list[dict], pd.DataFrame]:
    evaluation_settings = arguments.settings["evaluation"]
    results = load_scan_results(arguments.inputs)
    complexity = load_complexity(arguments.complexity)
    summary = summary_table(
        results,
        arguments.methods,
        complexity,
        int(evaluation_settings["bootstrap_samples"]),
        float(evaluation_settings["confidence_level"]),
        int(arguments.settings.get("seed", 0)),
    )
    return results, summary


def run_table(arguments: argparse.Namespace) -> None:
    """Write the per-scan table and the per-method comparison table."""
    results, summary = _summary_from_arguments(arguments)
    io.write_csv(per_scan_table(results), arguments.out_per_scan)
    io.write_csv(summary, arguments.out_summary)
    LOG.info("wrote %d per-scan rows and %d method rows", len(results), len(summary))


def run_ablation(arguments: argparse.Namespace) -> None:
    """Write the ablation table."""
    _, summary = _summary_from_arguments(arguments)
    table = ablation_table(summary, arguments.methods, arguments.settings["methods"])
    io.write_csv(table, arguments.out)
    LOG.info("wrote %d ablation rows", len(table))


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with the scan, table and ablation subcommands."""
    parser = argparse.ArgumentParser(prog="python -m dramseg.evaluate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    scan = commands.add_parser("scan", help="metrics of one prediction on one scan")
    scan.add_argument("--method", required=True, help="method name written into the result")
    scan.add_argument("--scan-id", required=True)
    scan.add_argument("--prediction", required=True, help="lesion mask on the CT grid (0 background, >0 lesion)")
    scan.add_argument(
        "--lobe-table",
        default=None,
        help="per-lobe table with `lobe` and `score` columns; without it the scores are computed from the prediction",
    )
    scan.add_argument("--lobes", required=True, help="lobe map with internal labels on the CT grid")
    scan.add_argument("--record", required=True, help="results/scans/{scan}/record.json")
    scan.add_argument("--out", required=True, help="per-scan result JSON")
    settings_module.add_settings_argument(scan)

    for name, help_text in (("table", "per-scan and comparison tables"), ("ablation", "ablation table")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--inputs", nargs="+", required=True, help="per-scan result JSON files")
        command.add_argument("--complexity", nargs="*", default=[], help="complexity JSON files, one per method")
        command.add_argument("--methods", nargs="+", required=True, help="methods, in the order of the table rows")
        if name == "table":
            command.add_argument("--out-per-scan", required=True)
            command.add_argument("--out-summary", required=True)
        else:
            command.add_argument("--out", required=True)
        settings_module.add_settings_argument(command)
    return parser


def main(argv=None) -> None:
    """Parse the command line and run the subcommand."""
    arguments = build_parser().parse_args(argv)
    settings_module.configure_logging()
    if arguments.command == "scan":
        run_scan(arguments)
    elif arguments.command == "table":
        run_table(arguments)
    else:
        run_ablation(arguments)


if __name__ == "__main__":
    main()
