"""Tests of dramseg.evaluate: per-scan evaluation on small NIfTI files and the tables."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from dramseg import evaluate, io
from dramseg.errors import PipelineInputError

SPACING_XYZ_MM = (0.8, 0.8, 2.0)
ORIGIN_XYZ_MM = (-10.0, 20.0, -30.0)
SHAPE_ZYX = (5, 10, 10)
SCORE_INTERVALS = {
    "0": [0.0, 0.0],
    "1": [0.01, 0.05],
    "2": [0.05, 0.25],
    "3": [0.25, 0.5],
    "4": [0.5, 0.75],
    "5": [0.75, 1.0],
}
SETTINGS = {
    "evaluation": {
        "surface_method": "mesh",
        "reference_subtypes": True,
        "geometry_tolerance_mm": 0.01,
        "direction_tolerance": 0.0001,
        "bootstrap_samples": 50,
        "confidence_level": 0.95,
    },
    "chunks": {"score_intervals": SCORE_INTERVALS},
    "seed": 0,
}


def write_image(array_zyx, path, origin_xyz_mm=ORIGIN_XYZ_MM):
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(SPACING_XYZ_MM)
    image.SetOrigin(origin_xyz_mm)
    sitk.WriteImage(image, str(path))
    return path


def slab_lobes():
    """Return a uint8 lobe map whose z slice i contains lobe label i + 1 (100 voxels per lobe)."""
    lobes = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    for index in range(5):
        lobes[index] = index + 1
    return lobes


def prediction_mask():
    """Return the predicted lesion: 30 voxels in lul (slice 0) and 60 in lll (slice 1)."""
    prediction = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    prediction[0, :3, :] = 1
    prediction[1, :6, :] = 1
    return prediction


def reference_labels():
    """Return the reference: lul rows 0-1 ground glass (20 voxels), lll rows 0-3 consolidation (40 voxels)."""
    reference = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    reference[0, :2, :] = 1
    reference[1, :4, :] = 2
    return reference


@pytest.fixture
def scan_files(tmp_path):
    """Write a lobe map, prediction, reference, lobe table and record of scan "s1"."""
    files = {
        "lobes": write_image(slab_lobes(), tmp_path / "lobes.nii.gz"),
        "prediction": write_image(prediction_mask(), tmp_path / "lesion.nii.gz"),
        "reference": write_image(reference_labels(), tmp_path / "reference.nii.gz"),
        "lobe_table": tmp_path / "lobes.csv",
        "record": tmp_path / "record.json",
        "out": tmp_path / "out" / "s1.json",
    }
    pd.DataFrame({"lobe": ["lul", "lll", "rul", "rll", "rml"], "score": [3, 4, 0, 0, 0]}).to_csv(
        files["lobe_table"], index=False
    )
    write_record(files, reference=str(files["reference"]))
    return files


def write_record(files, reference, scores="default"):
    if scores == "default":
        scores = {"lul": 2, "lll": 4, "rul": 0, "rll": 0, "rml": 1}
    record = {"scan_id": "s1", "split": "test", "reference": reference, "scores": scores}
    files["record"].write_text(json.dumps(record))


def run_scan(files, lobe_table=True):
    argv = [
        "scan",
        "--method", "dram-p",
        "--scan-id", "s1",
        "--prediction", str(files["prediction"]),
        "--lobes", str(files["lobes"]),
        "--record", str(files["record"]),
        "--out", str(files["out"]),
        "--settings", json.dumps(SETTINGS),
    ]  # fmt: skip
    if lobe_table:
        argv += ["--lobe-table", str(files["lobe_table"])]
    evaluate.main(argv)
    return io.read_json(files["out"])


# Prediction 90 voxels, reference 60 voxels, overlap 20 (lul) + 40 (lll) = 60, lung 500 voxels.
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("dsc", 2 * 60 / (90 + 60)),
        ("apd", 30 / 500),
        ("fdr", 1 - 60 / 90),
        ("tpr", 1.0),
        ("tpr_ggo", 1.0),
        ("tpr_consolidation", 1.0),
        ("lung_volume_ml", 500 * 0.8 * 0.8 * 2.0 / 1000),
        ("prediction_volume_ml", 90 * 0.8 * 0.8 * 2.0 / 1000),
        ("reference_volume_ml", 60 * 0.8 * 0.8 * 2.0 / 1000),
    ],
)
def test_scan_metrics_hand_values(scan_files, key, expected):
    result = run_scan(scan_files)
    assert result[key] == pytest.approx(expected)


def test_scan_mixed_tpr_null(scan_files):
    assert run_scan(scan_files)["tpr_mixed"] is None


def test_scan_svrd_positive(scan_files):
    assert run_scan(scan_files)["svrd"] > 0.0


def test_scan_scores_from_table_and_record(scan_files):
    result = run_scan(scan_files)
    assert result["predicted_scores"] == {"lul": 3, "lll": 4, "rul": 0, "rll": 0, "rml": 0}
    assert result["reference_scores"] == {"lul": 2, "lll": 4, "rul": 0, "rll": 0, "rml": 1}


def test_scan_scores_without_lobe_table(scan_files):
    # lul 30 %, lll 60 % of their lobes.
    result = run_scan(scan_files, lobe_table=False)
    assert result["predicted_scores"] == {"lul": 3, "lll": 4, "rul": 0, "rll": 0, "rml": 0}


def test_scan_without_reference(scan_files):
    write_record(scan_files, reference=None)
    result = run_scan(scan_files)
    assert result["reference"] is None
    assert result["note"] == evaluate.NO_REFERENCE_NOTE
    assert all(result[key] is None for key, _, _ in evaluate.METRIC_COLUMNS)
    assert result["reference_scores"]["lll"] == 4


def test_scan_without_reference_or_scores(scan_files):
    write_record(scan_files, reference=None, scores=None)
    assert run_scan(scan_files)["reference_scores"] is None


def test_scan_prediction_grid_mismatch(scan_files):
    write_image(prediction_mask(), scan_files["prediction"], origin_xyz_mm=(-9.0, 20.0, -30.0))
    with pytest.raises(PipelineInputError, match="origin differ"):
        run_scan(scan_files)


def test_scan_reference_size_mismatch(scan_files):
    write_image(reference_labels()[:4], scan_files["reference"])
    with pytest.raises(PipelineInputError, match="reference mask is not on the grid"):
        run_scan(scan_files)


def test_scan_probability_map_rejected(scan_files):
    write_image(prediction_mask().astype(np.float32) * 0.7, scan_files["prediction"])
    with pytest.raises(PipelineInputError, match="probability map"):
        run_scan(scan_files)


def test_scan_record_of_other_scan_rejected(scan_files):
    scan_files["record"].write_text(json.dumps({"scan_id": "s2", "reference": None, "scores": None}))
    with pytest.raises(PipelineInputError, match="record is for scan 's2'"):
        run_scan(scan_files)


def test_scan_out_of_range_table_score_rejected(scan_files):
    pd.DataFrame({"lobe": ["lul"], "score": [7]}).to_csv(scan_files["lobe_table"], index=False)
    with pytest.raises(PipelineInputError, match="expected an integer from 0 to 5"):
        run_scan(scan_files)


def scan_result(method, scan_id, dsc, tpr, reference=True, reference_scores=None, predicted_scores=None):
    """Return a per-scan result dictionary as evaluate_scan writes it (null for undefined values)."""
    metrics_values = {"dsc": dsc, "apd": 0.02, "svrd": 0.1, "fdr": 0.3, "tpr": tpr}
    metrics_values.update({"tpr_ggo": tpr, "tpr_consolidation": None, "tpr_mixed": None})
    if not reference:
        metrics_values = {key: None for key in metrics_values}
    return {
        "method": method,
        "scan_id": scan_id,
        "reference": "reference.nii.gz" if reference else None,
        "note": None if reference else evaluate.NO_REFERENCE_NOTE,
        **metrics_values,
        "lung_volume_ml": 4000.0,
        "prediction_volume_ml": 100.0,
        "reference_volume_ml": 90.0 if reference else None,
        "reference_scores": reference_scores or {"lul": 1, "lll": 2, "rul": 0, "rll": 3, "rml": 1},
        "predicted_scores": predicted_scores or {"lul": 1, "lll": 2, "rul": 0, "rll": 2, "rml": 1},
    }


@pytest.fixture
def table_files(tmp_path):
    """Write per-scan results of methods "dram" (three scans, one without reference) and "cam-p"."""
    results = [
        scan_result("dram", "s1", 0.6, 0.5),
        scan_result("dram", "s2", 0.8, None),
        scan_result("dram", "s3", None, None, reference=False),
        scan_result("cam-p", "s1", 0.3, 0.2, predicted_scores={"lul": 0, "lll": 2, "rul": 0, "rll": 3, "rml": 1}),
        scan_result("cam-p", "s2", 0.5, 0.4),
    ]
    paths = []
    for result in results:
        path = tmp_path / "evaluate" / result["method"] / f"{result['scan_id']}.json"
        io.write_json(result, path)
        paths.append(str(path))
    complexity = tmp_path / "cam.json"
    io.write_json({"method": "cam", "params": 7030, "macs_test": 66150, "macs_train": 132300}, complexity)
    return {"inputs": paths, "complexity": [str(complexity)], "tmp": tmp_path}


def run_table(table_files, methods=("dram", "cam-p")):
    out_per_scan = table_files["tmp"] / "tables" / "per_scan.csv"
    out_summary = table_files["tmp"] / "tables" / "comparison.csv"
    argv = ["table", "--inputs", *table_files["inputs"], "--complexity", *table_files["complexity"]]
    argv += ["--methods", *methods, "--out-per-scan", str(out_per_scan), "--out-summary", str(out_summary)]
    argv += ["--settings", json.dumps(SETTINGS)]
    evaluate.main(argv)
    return pd.read_csv(out_per_scan), pd.read_csv(out_summary, keep_default_na=False, na_values=[""])


def test_table_rows_in_method_order(table_files):
    _, summary = run_table(table_files)
    assert list(summary["method"]) == ["dram", "cam-p"]


def test_table_per_scan_rows(table_files):
    per_scan, _ = run_table(table_files)
    assert len(per_scan) == 5


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("n_scans", 3),
        ("n_without_reference", 1),
        ("dsc_pct_mean", 70.0),
        ("dsc_pct_sd", float(np.std([60.0, 80.0], ddof=1))),
        ("dsc_pct_n", 2),
        # s2's TPR is undefined: one scan left.
        ("tpr_pct_mean", 50.0),
        ("tpr_pct_n", 1),
        ("apd_pct_mean", 2.0),
        ("n_lobes", 15),
        ("lobe_accuracy_pct", 80.0),
    ],
)
def test_table_summary_dram(table_files, column, expected):
    _, summary = run_table(table_files)
    assert summary.loc[0, column] == pytest.approx(expected)


def test_table_undefined_sd_empty(table_files):
    _, summary = run_table(table_files)
    assert math.isnan(summary.loc[0, "tpr_pct_sd"])


def test_table_formatted_dsc(table_files):
    _, summary = run_table(table_files)
    assert summary.loc[0, "DSC (%)"] == "70.00 ± 14.14"


def test_table_note_counts_scans_without_reference(table_files):
    _, summary = run_table(table_files)
    assert summary.loc[0, "note"].startswith("1 scan(s) without reference")


def test_table_postprocessed_method_uses_network_complexity(table_files):
    _, summary = run_table(table_files)
    assert summary.loc[1, "macs_test"] == 66150


def test_table_missing_complexity_empty(table_files):
    _, summary = run_table(table_files)
    assert math.isnan(summary.loc[0, "params"])


def test_table_kappa_inside_interval(table_files):
    _, summary = run_table(table_files)
    row = summary.loc[1]
    assert row["kappa_ci_low"] <= row["kappa"] <= row["kappa_ci_high"]


def test_table_method_without_results_raises(table_files):
    with pytest.raises(ValueError, match="'dcam' has no per-scan results"):
        run_table(table_files, methods=("dram", "cam-p", "dcam"))


def test_table_unrequested_method_raises(table_files):
    with pytest.raises(ValueError, match=r"\['cam-p'\] are not in the requested methods"):
        run_table(table_files, methods=("dram",))


def test_ablation_flags_and_values(table_files):
    out = table_files["tmp"] / "tables" / "ablation.csv"
    settings = dict(SETTINGS)
    settings["methods"] = {
        "dram": {"kind": "regression", "er": False, "ref": True, "attention": True},
        "cam": {"kind": "cam", "er": False, "ref": False, "attention": False},
    }
    argv = ["ablation", "--inputs", *table_files["inputs"], "--complexity", *table_files["complexity"]]
    argv += ["--methods", "dram", "cam-p", "--out", str(out), "--settings", json.dumps(settings)]
    evaluate.main(argv)
    table = pd.read_csv(out)
    assert list(table.columns[:4]) == ["ER", "REF", "AT", "method"]
    assert table.loc[0, ["ER", "REF", "AT"]].tolist() == [0, 1, 1]
    assert table.loc[0, "DSC (%)"] == "70.00 ± 14.14"
    assert table.loc[1, "params"] == 7030
