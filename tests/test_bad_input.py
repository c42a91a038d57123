"""Bad-input cases not covered by the per-stage tests: each case is a real file or a generated image.

Cases already tested in the per-stage test files (test_readers.py,
test_lobes.py, test_cohort.py and the others) are not repeated here.
docs/troubleshooting.md lists every error message with the test that covers it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from test_lobes import COHORT, LOBE_SETTINGS, ORIGIN_MM, SPACING_MM, synthetic_ct_zyx, synthetic_lobes_zyx, to_image

from dramseg import chunks, evaluate, lobes, resample
from dramseg.anatomy import LOBE_LABELS, LOBE_NAMES
from dramseg.cohort import read_cohort_table
from dramseg.errors import PipelineInputError
from dramseg.intervals import parse_score_intervals
from dramseg.readers import read_ct, read_image

REPOSITORY = Path(__file__).resolve().parents[1]
TCGA_CT = REPOSITORY / ".." / "shared" / "data" / "tcga-de-a4ma" / "ct-2mm.nii.gz"
DEFAULT_CONFIG = yaml.safe_load((REPOSITORY / "config.yaml").read_text())
SCORE_INTERVALS = parse_score_intervals(DEFAULT_CONFIG["chunks"]["score_intervals"])


def build(ct, source, convention="diag", **overrides):
    return lobes.build_lobe_map(ct, source, convention, COHORT, {**LOBE_SETTINGS, **overrides}, "s1", "lobes.nii.gz")


def lobe_volumes_ml(image: sitk.Image) -> dict[str, float]:
    return {name: values["volume_ml"] for name, values in lobes.lobe_statistics(image).items()}


@pytest.fixture(scope="module")
def synthetic():
    """A DIAG lobe map of two box lungs (2 mm voxels, identity direction) and its CT."""
    lobes_zyx = synthetic_lobes_zyx()
    return to_image(synthetic_ct_zyx(lobes_zyx)), lobes_zyx


# CT intensities in another unit.


@pytest.mark.parametrize("unit, offset, scale", [("normalised 0..1", 1000.0, 1 / 1400.0), ("stored 0..4095", 1024.0, 1.0)])
def test_read_ct_other_unit_rejected(tmp_path, unit, offset, scale):
    ct_zyx = ((synthetic_ct_zyx(synthetic_lobes_zyx()) + offset) * scale).astype(np.float32)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(to_image(ct_zyx), str(path))
    with pytest.raises(PipelineInputError, match="do not look like Hounsfield units"):
        read_ct(path, "s1")


# CT and lobe map on different grids.


def test_lobe_map_ras_equals_lps(synthetic):
    """A map stored with RAS axes (x and y flipped) lands on the same voxels as the LPS original."""
    ct, internal_zyx = synthetic
    size_xyz = np.array(ct.GetSize())
    far_corner_mm = np.array(ORIGIN_MM) + (size_xyz - 1) * np.array(SPACING_MM)
    ras_origin_mm = (far_corner_mm[0], far_corner_mm[1], ORIGIN_MM[2])
    ras = to_image(internal_zyx[:, ::-1, ::-1].copy(), origin_mm=ras_origin_mm, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    result, qc = build(ct, ras)
    assert qc["resampled_to_ct_grid"] is True
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result), internal_zyx)


def test_lobe_map_coarser_spacing_resampled(synthetic):
    """A 4 mm lobe map covering the same space as the 2 mm CT keeps every lobe's volume within 15 %."""
    ct, internal_zyx = synthetic
    coarse_grid = sitk.Image([size // 2 for size in ct.GetSize()], sitk.sitkUInt8)
    coarse_grid.SetSpacing([2 * value for value in SPACING_MM])
    coarse_grid.SetOrigin([value + 1.0 for value in ORIGIN_MM])
    coarse = resample.resample_to_reference(to_image(internal_zyx), coarse_grid, "nearest")
    result, qc = build(ct, coarse)
    expected_ml = lobe_volumes_ml(to_image(internal_zyx))
    found_ml = lobe_volumes_ml(result)
    assert qc["resampled_to_ct_grid"] is True
    for name in LOBE_NAMES:
        assert found_ml[name] == pytest.approx(expected_ml[name], rel=0.15), name


# Lobes that are too small.


def test_lobe_of_few_voxels_rejected(synthetic):
    ct, internal_zyx = synthetic
    few_zyx = np.where(internal_zyx == LOBE_LABELS["rml"], 0, internal_zyx).astype(np.uint8)
    few_zyx[20, 10, 10:13] = LOBE_LABELS["rml"]
    with pytest.raises(PipelineInputError, match=r"smaller than lobes.min_lobe_volume_ml = 5 ml: right middle lobe \(RML, label 5\): 0.024 ml"):
        build(ct, to_image(few_zyx))


# Broken files in other formats.


def test_read_image_truncated_mha(tmp_path):
    path = tmp_path / "ct.mha"
    sitk.WriteImage(to_image(synthetic_ct_zyx(synthetic_lobes_zyx())), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PipelineInputError, match="reading the image failed"):
        read_image(path, "s1")


# Non-finite voxels, whole-body scans and thick slices.


def test_read_ct_infinite_mha_rejected(tmp_path):
    ct_zyx = synthetic_ct_zyx(synthetic_lobes_zyx())
    ct_zyx[10, 10, 10] = np.inf
    path = tmp_path / "ct.mha"
    sitk.WriteImage(to_image(ct_zyx), str(path))
    with pytest.raises(PipelineInputError, match="1 NaN or infinite voxels"):
        read_ct(path, "s1")


# Runs in a child process so that its peak memory is measured alone. It reads
# the whole-body CT, puts a lobe map into the chest and crops and resamples it.
# Writing 5 to /proc/self/clear_refs resets the peak resident size (VmHWM, Linux).
WHOLE_BODY_SCRIPT = """
import json, sys
import numpy as np, SimpleITK as sitk
from dramseg.readers import read_ct
from dramseg.resample import resample_scan

def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

ct = read_ct(sys.argv[1], "tcga")
lobes_zyx = np.zeros(sitk.GetArrayViewFromImage(ct).shape, dtype=np.uint8)
lobes_zyx[230:300, 80:160, 70:125] = 3
lobes_zyx[230:300, 80:160, 125:180] = 1
lobes = sitk.GetImageFromArray(lobes_zyx)
lobes.CopyInformation(ct)
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before_kib = status_kib("VmRSS")
except OSError:
    before_kib = None
ct_resampled, _, box = resample_scan(ct, lobes, 1.4, "linear", 10.0)
increase_mib = None if before_kib is None else (status_kib("VmHWM") - before_kib) / 1024
print(json.dumps({"box": box, "peak_increase_mib": increase_mib}))
"""


@pytest.fixture(scope="module")
def whole_body_resampled():
    if not TCGA_CT.is_file():
        pytest.skip(f"whole-body CT not found at {TCGA_CT}")
    process = subprocess.run(
        [sys.executable, "-c", WHOLE_BODY_SCRIPT, str(TCGA_CT)], capture_output=True, text=True, timeout=120, check=False
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.splitlines()[-1])


def test_whole_body_cropped_to_lobes(whole_body_resampled):
    # Lobe voxels span x 70..179, y 80..159, z 230..299; the 10 mm margin adds 5 voxels of 2 mm.
    box = whole_body_resampled["box"]
    assert box["start_index_xyz"] == [65, 75, 225]
    assert box["size_xyz"] == [120, 90, 80]


def test_whole_body_resampled_grid_small(whole_body_resampled):
    # The whole 500 x 500 x 672 mm scan at 1.4 mm would have 358 x 358 x 480 voxels.
    assert whole_body_resampled["box"]["resampled_size_xyz"] == [172, 129, 115]


def test_whole_body_resample_memory_bounded(whole_body_resampled):
    # Measured with this script and SimpleITK 2.5.7: about 32 MiB for the chest crop, 630 MiB when the crop is the whole scan.
    if whole_body_resampled["peak_increase_mib"] is None:
        pytest.skip("the peak resident size cannot be reset here (/proc/self/clear_refs)")
    assert whole_body_resampled["peak_increase_mib"] < 100


@pytest.fixture(scope="module")
def thick_slices():
    """A CT of 8 mm slices whose HU rise linearly with z, resampled to 1.4 mm with its lobe map."""
    size_xyz = (48, 40, 12)
    spacing_xyz_mm = (0.7, 0.7, 8.0)
    z_mm = np.arange(size_xyz[2]) * spacing_xyz_mm[2]
    ct_zyx = np.broadcast_to((-1000.0 + 10.0 * z_mm)[:, None, None], size_xyz[::-1]).astype(np.float32)
    lobes_zyx = np.zeros(size_xyz[::-1], dtype=np.uint8)
    lobes_zyx[3:9, 10:30, 5:20] = LOBE_LABELS["rul"]
    lobes_zyx[3:9, 10:30, 28:43] = LOBE_LABELS["lul"]
    images = []
    for array_zyx in (ct_zyx, lobes_zyx):
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing(spacing_xyz_mm)
        images.append(image)
    return resample.resample_scan(images[0], images[1], 1.4, "linear", 4.0)


def test_thick_slices_isotropic_spacing(thick_slices):
    ct, _, _ = thick_slices
    assert ct.GetSpacing() == pytest.approx((1.4, 1.4, 1.4))


def test_thick_slices_linear_values(thick_slices):
    """Inside the outer slice centres, linear interpolation reproduces the linear z profile exactly."""
    ct, _, _ = thick_slices
    ct_zyx = sitk.GetArrayViewFromImage(ct)
    z_mm = np.array([ct.TransformIndexToPhysicalPoint((0, 0, index))[2] for index in range(ct.GetSize()[2])])
    inside = (z_mm >= 2 * 8.0) & (z_mm <= 9 * 8.0)
    np.testing.assert_allclose(ct_zyx[inside, 8, 8], -1000.0 + 10.0 * z_mm[inside], atol=0.01)


def test_thick_slices_lobe_extent(thick_slices):
    """The lobe slab of slices 3..8 (outer edges at 20 and 68 mm) keeps its extent within one new voxel."""
    _, lobes_resampled, _ = thick_slices
    lobes_zyx = sitk.GetArrayViewFromImage(lobes_resampled)
    rows = np.flatnonzero(np.any(lobes_zyx > 0, axis=(1, 2)))
    low_mm = lobes_resampled.TransformIndexToPhysicalPoint((0, 0, int(rows[0])))[2] - 0.7
    high_mm = lobes_resampled.TransformIndexToPhysicalPoint((0, 0, int(rows[-1])))[2] + 0.7
    assert low_mm == pytest.approx(20.0, abs=1.4)
    assert high_mm == pytest.approx(68.0, abs=1.4)


# Cohort tables without rows.


def test_cohort_without_rows_rejected(tmp_path):
    path = tmp_path / "cohort.csv"
    path.write_text("scan_id,ct,split,score_lul,score_lll,score_rul,score_rml,score_rll\n")
    with pytest.raises(PipelineInputError, match="has no rows"):
        read_cohort_table(path)


def test_cohort_binary_file_rejected(tmp_path):
    path = tmp_path / "cohort.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(PipelineInputError, match="is not a readable CSV file"):
        read_cohort_table(path)


# Scans without lesions and with lesions everywhere.


def scan_images():
    """Resampled CT, lobes, candidate and vessel images of a small five-lobe scan (2 mm)."""
    lobes_zyx = synthetic_lobes_zyx()
    ct = to_image(synthetic_ct_zyx(lobes_zyx))
    zeros = to_image(np.zeros_like(lobes_zyx))
    return ct, to_image(lobes_zyx), zeros, zeros, lobes_zyx


@pytest.mark.parametrize("score, p_star, low, high", [(0, 0.3, 0.0, 0.0), (5, 0.9, 0.75, 0.95), (5, 0.0, 0.0, 0.05)])
def test_calibrate_extreme_scores(score, p_star, low, high):
    table = pd.DataFrame({"lobe": list(LOBE_NAMES), "p_star": [p_star] * 5})
    intervals = chunks.calibrate_lobes("s1", "train", {name: score for name in LOBE_NAMES}, table, SCORE_INTERVALS, 0.05)
    np.testing.assert_allclose(intervals["low"], low)
    np.testing.assert_allclose(intervals["high"], high)


@pytest.mark.parametrize("lesion", ["none", "everywhere"])
def test_store_reference_extremes(tmp_path, lesion):
    ct, lobes_image, candidates, vessels, lobes_zyx = scan_images()
    reference_zyx = (lobes_zyx > 0).astype(np.uint8) * (0 if lesion == "none" else 2)
    score = 0 if lesion == "none" else 5
    table = pd.DataFrame({"lobe": list(LOBE_NAMES), "p_star": [0.0] * 5})
    intervals = chunks.calibrate_lobes("s1", "train", {name: score for name in LOBE_NAMES}, table, SCORE_INTERVALS, 0.05)
    section = dict(DEFAULT_CONFIG["chunks"], shape=[16, 16, 16])
    path = tmp_path / "chunks.h5"
    chunks.write_chunk_store(
        path, {"scan_id": "s1", "split": "train"}, ct, lobes_image, candidates, vessels, intervals, section,
        reference=to_image(reference_zyx),
    )  # fmt: skip
    with h5py.File(path, "r") as store:
        for name in LOBE_NAMES:
            group = store["lobes"][name]
            expected = group["mask"][...] * (0 if lesion == "none" else 2)
            np.testing.assert_array_equal(group["reference"][...], expected, err_msg=name)
            assert group.attrs["score"] == score, name


@pytest.fixture(scope="module")
def extreme_results():
    lobes_zyx = synthetic_lobes_zyx()
    settings = {"surface_method": "mesh", "reference_subtypes": True}
    scores = {name: 0 for name in LOBE_NAMES}
    empty = np.zeros(lobes_zyx.shape, dtype=bool)
    full = lobes_zyx > 0
    return {
        "none": evaluate.evaluate_scan(
            "s1", "dram", empty, lobes_zyx, empty.astype(np.uint8), SPACING_MM, scores, None, settings, SCORE_INTERVALS
        ),
        "everywhere": evaluate.evaluate_scan(
            "s1", "dram", full, lobes_zyx, full.astype(np.uint8) * 2, SPACING_MM,
            {name: 5 for name in LOBE_NAMES}, None, settings, SCORE_INTERVALS,
        ),
    }  # fmt: skip


@pytest.mark.parametrize(
    "lesion, key, expected",
    [
        ("none", "dsc", 1.0),
        ("none", "apd", 0.0),
        ("none", "fdr", 0.0),
        ("none", "svrd", 0.0),
        ("everywhere", "dsc", 1.0),
        ("everywhere", "apd", 0.0),
        ("everywhere", "fdr", 0.0),
        ("everywhere", "tpr", 1.0),
        ("everywhere", "tpr_consolidation", 1.0),
    ],
)
def test_evaluate_extremes(extreme_results, lesion, key, expected):
    assert extreme_results[lesion][key] == pytest.approx(expected)


def test_evaluate_no_lesion_tpr_undefined(extreme_results):
    assert np.isnan(extreme_results["none"]["tpr"])


@pytest.mark.parametrize("lesion, score", [("none", 0), ("everywhere", 5)])
def test_evaluate_extremes_scores(extreme_results, lesion, score):
    assert extreme_results[lesion]["predicted_scores"] == {name: score for name in LOBE_NAMES}


# Messages of single checks that no other test triggers.


def test_read_ct_rgb_rejected(tmp_path):
    path = tmp_path / "ct.png.nii.gz"
    grey = to_image(synthetic_ct_zyx(synthetic_lobes_zyx()))
    sitk.WriteImage(sitk.Compose(grey, grey, grey), str(path))
    with pytest.raises(PipelineInputError, match="3 components per voxel"):
        read_ct(path, "s1")


def test_read_ct_invalid_rescale_setting(tmp_path):
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(to_image(synthetic_ct_zyx(synthetic_lobes_zyx())), str(path))
    with pytest.raises(PipelineInputError, match="invalid setting resample.rescale"):
        read_ct(path, "s1", rescale={"slope": 1})


def test_dicom_duplicate_positions_rejected(tmp_path):
    """A second acquisition under the same series UID repeats the slice at 2 mm."""
    from test_readers import write_dicom_series

    series_uid = write_dicom_series(tmp_path / "dicom", [0.0, 2.0, 4.0, 6.0])
    write_dicom_series(tmp_path / "extra", [2.0], series_uid=series_uid)
    for path in (tmp_path / "extra").iterdir():
        path.rename(tmp_path / "dicom" / f"copy-{path.name}")
    with pytest.raises(PipelineInputError, match="have the same position"):
        read_image(tmp_path / "dicom", "s1")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"calibration_tolerance": -0.1}, "chunks.calibration_tolerance must be a fraction >= 0"),
        ({"score_intervals": {"0": [0, 0], "2": [0.1, 0.2]}}, "chunks.score_intervals is invalid"),
    ],
)
def test_chunk_settings_rejected(change, message):
    with pytest.raises(PipelineInputError, match=message):
        chunks.chunk_settings({"chunks": {**DEFAULT_CONFIG["chunks"], **change}})


def test_chunk_settings_section_missing():
    with pytest.raises(PipelineInputError, match="the settings have no 'chunks' section"):
        chunks.chunk_settings({})


@pytest.mark.parametrize(
    "record, message",
    [({"split": "train"}, "the scan record has no 'scan_id' key"), ({"scan_id": "s1", "split": "training"}, "split 'training' is not one of")],
)
def test_chunk_record_rejected(tmp_path, record, message):
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    with pytest.raises(PipelineInputError, match=message):
        chunks.read_record(path)


@pytest.mark.parametrize(
    "rows, message",
    [
        ("lobe\nlul\n", r"lacks the columns \['p_star'\]"),
        ("lobe,p_star\nleft,0.1\n", "unknown lobe name 'left'"),
        ("lobe,p_star\nlul,1.5\n", "p_star of lobe 'lul' is 1.5"),
        ("lobe,p_star\nlul,0.1\nlul,0.2\n", "lists a lobe twice"),
    ],
)
def test_candidate_table_rejected(tmp_path, rows, message):
    path = tmp_path / "lobes.csv"
    path.write_text(rows)
    with pytest.raises(PipelineInputError, match=message):
        chunks.read_candidate_table(path, "s1")


@pytest.mark.parametrize(
    "rows, message",
    [
        ("lobe,score\nlul,1\n", "the interval table lacks the columns"),
        ("lobe,score,raw_low,raw_high,p_star,low,high\nleft,1,0,0,0,0,0\n", r"unknown lobe names \['left'\]"),
    ],
)
def test_interval_table_rejected(tmp_path, rows, message):
    path = tmp_path / "intervals.csv"
    path.write_text(rows)
    with pytest.raises(PipelineInputError, match=message):
        chunks.read_intervals(path, "s1")


def test_store_without_intervals_rejected(tmp_path):
    ct, lobes_image, candidates, vessels, _ = scan_images()
    empty = pd.DataFrame(columns=list(chunks.INTERVAL_COLUMNS))
    with pytest.raises(PipelineInputError, match="no lobe has both voxels and an interval"):
        chunks.write_chunk_store(
            tmp_path / "chunks.h5", {"scan_id": "s1", "split": "test"}, ct, lobes_image, candidates, vessels, empty,
            DEFAULT_CONFIG["chunks"],
        )  # fmt: skip


@pytest.mark.parametrize(
    "index, splits, message",
    [
        (pd.DataFrame({"scan_id": ["s1"]}), ("train",), "the chunk index lacks the columns"),
        (pd.DataFrame({column: ["x"] for column in chunks.INDEX_COLUMNS}), ("train",), r"has no rows of the splits \['train'\]"),
    ],
)
def test_chunk_index_rejected(index, splits, message):
    from dramseg.dataset import ChunkDataset

    with pytest.raises(PipelineInputError, match=message):
        ChunkDataset(index, splits=splits)


def test_unknown_device_rejected():
    from dramseg.devices import resolve_device

    with pytest.raises(ValueError, match="device 'gpu' is not one of cpu, cuda, auto"):
        resolve_device("gpu", allow_cpu_fallback=True)


@pytest.mark.parametrize("text, message", [("{", "--settings is not valid JSON"), ("[1]", "--settings must be a JSON object")])
def test_settings_argument_rejected(text, message):
    from dramseg.settings import parse_settings

    with pytest.raises(SystemExit, match=message):
        parse_settings(text)


def test_read_json_invalid(tmp_path):
    from dramseg.io import read_json

    path = tmp_path / "record.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_json(path)


@pytest.mark.parametrize("content, message", [(b"not a model", "could not be read"), (None, "is not a dramseg model.pt")])
def test_model_file_rejected(tmp_path, content, message):
    import torch

    from dramseg.infer import load_model

    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"state_dict": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(PipelineInputError, match=message):
        load_model(str(path), {}, torch.device("cpu"))


def test_model_settings_mismatch_rejected():
    from dramseg.infer import check_model_settings

    settings = {key: DEFAULT_CONFIG[key] for key in ("chunks", "resample", "model")}
    metadata = {
        "chunk_shape_zyx": [64, 64, 64], "hu_window": DEFAULT_CONFIG["chunks"]["hu_window"],
        "background_value": DEFAULT_CONFIG["chunks"]["background_value"], "spacing_mm": 1.4,
        "label_order": list(LOBE_NAMES), "model": DEFAULT_CONFIG["model"],
    }  # fmt: skip
    with pytest.raises(PipelineInputError, match=r"was trained with chunks.shape = \[64, 64, 64\]"):
        check_model_settings(metadata, settings, "model.pt")


@pytest.mark.parametrize("kind, message", [("garbage", "the chunk store could not be read"), ("empty", "contains no lobe chunks")])
def test_chunk_store_for_inference_rejected(tmp_path, kind, message):
    from dramseg.infer import read_store

    path = tmp_path / "chunks.h5"
    if kind == "garbage":
        path.write_bytes(b"not hdf5")
    else:
        h5py.File(path, "w").close()
    with pytest.raises(PipelineInputError, match=message):
        read_store(str(path), "s1")


def test_scan_result_twice_rejected(tmp_path):
    path = tmp_path / "s1.json"
    path.write_text(json.dumps({"scan_id": "s1", "method": "dram"}))
    with pytest.raises(PipelineInputError, match="method 'dram' is evaluated twice"):
        evaluate.load_scan_results([path, path])


def test_complexity_file_incomplete(tmp_path):
    path = tmp_path / "dram.json"
    path.write_text(json.dumps({"method": "dram"}))
    with pytest.raises(PipelineInputError, match="the complexity file lacks the keys"):
        evaluate.load_complexity([path])


def test_ablation_unknown_method_rejected():
    with pytest.raises(PipelineInputError, match="ablation method 'dram_xy' is not in the config's `methods`"):
        evaluate.ablation_table(pd.DataFrame(), ["dram_xy"], DEFAULT_CONFIG["methods"])


def test_lobe_table_without_score_rejected(tmp_path):
    path = tmp_path / "lobes.csv"
    path.write_text("lobe,volume_ml\nlul,1.0\n")
    with pytest.raises(PipelineInputError, match=r"the lobe table lacks the columns \['score'\]"):
        evaluate.read_lobe_table_scores("s1", path, 5)
