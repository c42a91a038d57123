"""Tests of the lobe lookup stage: conventions, grid alignment, position and volume checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dramseg import lobes
from dramseg.anatomy import CONVENTIONS, LOBE_LABELS, LOBE_NAMES
from dramseg.errors import PipelineInputError
from dramseg.readers import read_ct, read_label_map

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TOTALSEGMENTATOR = SHARED_DATA / "totalsegmentator-example"
needs_totalsegmentator = pytest.mark.skipif(
    not (TOTALSEGMENTATOR / "segmentation-total-v2.nii.gz").is_file(),
    reason=f"TotalSegmentator example not found in {TOTALSEGMENTATOR}",
)

CUSTOM_LABELS = {"lul": 7, "lll": 8, "rul": 20, "rll": 21, "rml": 22}
COHORT = {
    "lobes_dir": None,
    "lobes_pattern": "{scan_id}_lobes.nii.gz",
    "default_lobe_convention": "diag",
    "custom_lobe_labels": CUSTOM_LABELS,
    "dicom_series": {},
}
LOBE_SETTINGS = {"allow_missing": False, "min_lobe_volume_ml": 5.0, "min_overlap_fraction": 0.5, "position_check": "error"}
RESAMPLE_SETTINGS = {"spacing_mm": 1.4, "interpolator": "linear", "lung_margin_mm": 10.0, "max_air_percentile_hu": -850.0, "rescale": None}
SPACING_MM = (2.0, 2.0, 2.0)
ORIGIN_MM = (-40.0, -30.0, -100.0)


def synthetic_lobes_zyx(shape_zyx=(36, 32, 40)) -> np.ndarray:
    """Return a uint8 DIAG lobe map (z, y, x) of two box-shaped lungs split into five lobes.

    With an identity direction, +x is patient left, +y posterior and +z superior,
    so the left lung has the larger x, and the oblique fissure (z - y constant)
    puts the upper lobes superior and anterior to the lower lobes.
    """
    z, y, x = np.indices(shape_zyx)
    lung = (z >= 3) & (z < 33) & (y >= 4) & (y < 28)
    right = lung & (x >= 4) & (x < 18)
    left = lung & (x >= 22) & (x < 36)
    upper_lower = z - y
    lobes_zyx = np.zeros(shape_zyx, dtype=np.uint8)
    lobes_zyx[left & (upper_lower > 2)] = LOBE_LABELS["lul"]
    lobes_zyx[left & (upper_lower <= 2)] = LOBE_LABELS["lll"]
    lobes_zyx[right & (upper_lower > 6)] = LOBE_LABELS["rul"]
    lobes_zyx[right & (upper_lower <= 6) & (y < 14) & (z >= 10)] = LOBE_LABELS["rml"]
    lobes_zyx[right & (upper_lower <= 6) & ((y >= 14) | (z < 10))] = LOBE_LABELS["rll"]
    return lobes_zyx


def synthetic_ct_zyx(lobes_zyx: np.ndarray) -> np.ndarray:
    """Return float32 HU: soft tissue, lungs at -850 HU and air around the body."""
    ct_zyx = np.full(lobes_zyx.shape, 40.0, dtype=np.float32)
    ct_zyx[lobes_zyx > 0] = -850.0
    ct_zyx[:, :2, :] = -1000.0
    return ct_zyx


def to_image(array_zyx: np.ndarray, origin_mm=ORIGIN_MM, spacing_mm=SPACING_MM, direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing_mm)
    image.SetOrigin(origin_mm)
    if direction is not None:
        image.SetDirection(direction)
    return image


def in_convention(internal_zyx: np.ndarray, labels: dict[str, int]) -> np.ndarray:
    """Relabel an internal (DIAG) lobe map into another convention."""
    source_zyx = np.zeros(internal_zyx.shape, dtype=np.int16)
    for name in LOBE_NAMES:
        source_zyx[internal_zyx == LOBE_LABELS[name]] = labels[name]
    return source_zyx


def build(ct, source, convention="diag", **overrides):
    settings = {**LOBE_SETTINGS, **overrides}
    return lobes.build_lobe_map(ct, source, convention, COHORT, settings, "s1", "lobes.nii.gz")


@pytest.fixture(scope="module")
def synthetic():
    lobes_zyx = synthetic_lobes_zyx()
    return to_image(synthetic_ct_zyx(lobes_zyx)), lobes_zyx


@pytest.fixture(scope="module")
def totalsegmentator():
    ct = read_ct(TOTALSEGMENTATOR / "ct.nii.gz", "ts")
    source = read_label_map(TOTALSEGMENTATOR / "segmentation-total-v2.nii.gz", "ts")
    return ct, source


# Conventions.


@pytest.mark.parametrize("convention", ["diag", "lungmask", "totalsegmentator", "totalsegmentator_v1", "custom"])
def test_convention_maps_to_internal(convention):
    labels = CUSTOM_LABELS if convention == "custom" else CONVENTIONS[convention]
    internal_zyx = synthetic_lobes_zyx()
    mapped_zyx, dropped = lobes.map_to_internal(in_convention(internal_zyx, labels), lobes.convention_labels(convention, COHORT))
    np.testing.assert_array_equal(mapped_zyx, internal_zyx)


@pytest.mark.parametrize("convention", ["diag", "lungmask", "totalsegmentator", "totalsegmentator_v1", "custom"])
def test_convention_passes_checks(synthetic, convention):
    ct, internal_zyx = synthetic
    labels = CUSTOM_LABELS if convention == "custom" else CONVENTIONS[convention]
    result, qc = build(ct, to_image(in_convention(internal_zyx, labels)), convention)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result), internal_zyx)


def test_unknown_convention_rejected():
    with pytest.raises(PipelineInputError, match="unknown lobe convention 'lungmask2'"):
        lobes.convention_labels("lungmask2", COHORT)


def test_custom_labels_duplicate_rejected():
    cohort = {**COHORT, "custom_lobe_labels": {"lul": 1, "lll": 1, "rul": 3, "rll": 4, "rml": 5}}
    with pytest.raises(PipelineInputError, match="five different positive integers"):
        lobes.convention_labels("custom", cohort)


def test_dropped_labels_counted(synthetic):
    ct, internal_zyx = synthetic
    source_zyx = internal_zyx.astype(np.int16)
    source_zyx[:, 30:, :] = 42
    _, qc = build(ct, to_image(source_zyx))
    assert qc["dropped_labels"] == {"42": int(np.count_nonzero(source_zyx == 42))}


# Finding the lobe map.


def test_find_lobe_map_from_record(tmp_path):
    path = tmp_path / "a.nii.gz"
    path.touch()
    assert lobes.find_lobe_map({"scan_id": "s1", "lobes": str(path)}, COHORT) == path


def test_find_lobe_map_from_pattern(tmp_path):
    (tmp_path / "s2_lobes.nii.gz").touch()
    (tmp_path / "s1_lobes.nii.gz").touch()
    cohort = {**COHORT, "lobes_dir": str(tmp_path)}
    assert lobes.find_lobe_map({"scan_id": "s2", "lobes": None}, cohort) == tmp_path / "s2_lobes.nii.gz"


def test_find_lobe_map_missing_names_both(tmp_path):
    cohort = {**COHORT, "lobes_dir": str(tmp_path)}
    with pytest.raises(PipelineInputError) as raised:
        lobes.find_lobe_map({"scan_id": "s3", "lobes": None}, cohort)
    assert "lobes column (empty)" in str(raised.value)
    assert "s3_lobes.nii.gz" in str(raised.value)


# Real TotalSegmentator map: other grid, organ labels, RUL absent.


@needs_totalsegmentator
def test_totalsegmentator_missing_rul_rejected(totalsegmentator):
    ct, source = totalsegmentator
    with pytest.raises(PipelineInputError, match=r"right upper lobe \(RUL, label 12\): 0 ml"):
        build(ct, source, "totalsegmentator")


@needs_totalsegmentator
def test_totalsegmentator_allowed_missing(totalsegmentator):
    ct, source = totalsegmentator
    result, qc = build(ct, source, "totalsegmentator", allow_missing=True)
    assert "rul" in qc["missing_lobes"]
    assert qc["resampled_to_ct_grid"] is True
    assert result.GetSize() == ct.GetSize()
    assert result.GetPixelID() == sitk.sitkUInt8
    assert qc["lobes"]["lll"]["voxels"] == 1312
    assert qc["lobes"]["lul"]["position_ok"] is True


@needs_totalsegmentator
def test_totalsegmentator_dropped_labels(totalsegmentator):
    ct, source = totalsegmentator
    _, qc = build(ct, source, "totalsegmentator", allow_missing=True)
    assert len(qc["dropped_labels"]) == 37
    assert qc["dropped_labels"]["5"] == 38634


@needs_totalsegmentator
def test_totalsegmentator_ras_equals_lps(totalsegmentator, tmp_path):
    ct, source = totalsegmentator
    # The same map stored with +x and +y axes (RAS-like direction): flip both array axes.
    size_xyz = source.GetSize()
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(source)[:, ::-1, ::-1].copy())
    flipped.SetSpacing(source.GetSpacing())
    flipped.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    flipped.SetOrigin(source.TransformIndexToPhysicalPoint((size_xyz[0] - 1, size_xyz[1] - 1, 0)))
    sitk.WriteImage(flipped, str(tmp_path / "ras.nii.gz"))
    reread = read_label_map(tmp_path / "ras.nii.gz", "ts")

    expected, _ = build(ct, source, "totalsegmentator", allow_missing=True)
    result, _ = build(ct, reread, "totalsegmentator", allow_missing=True)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result), sitk.GetArrayViewFromImage(expected))


# Grid alignment.


def test_same_grid_not_resampled(synthetic):
    ct, internal_zyx = synthetic
    _, qc = build(ct, to_image(internal_zyx))
    assert qc["resampled_to_ct_grid"] is False


def test_shifted_origin_moves_lobes(synthetic):
    ct, internal_zyx = synthetic
    shifted_origin_mm = (ORIGIN_MM[0] + 4.0, ORIGIN_MM[1], ORIGIN_MM[2])
    result, qc = build(ct, to_image(internal_zyx, origin_mm=shifted_origin_mm))
    expected_zyx = np.zeros_like(internal_zyx)
    expected_zyx[:, :, 2:] = internal_zyx[:, :, :-2]
    assert qc["resampled_to_ct_grid"] is True
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result), expected_zyx)


def test_no_overlap_rejected(synthetic):
    ct, internal_zyx = synthetic
    far_origin_mm = (ORIGIN_MM[0], ORIGIN_MM[1], ORIGIN_MM[2] + 1000.0)
    with pytest.raises(PipelineInputError, match=r"does not overlap the CT \(CT box \[-41\.0\.\.39\.0"):
        build(ct, to_image(internal_zyx, origin_mm=far_origin_mm))


def test_small_overlap_rejected(synthetic):
    ct, internal_zyx = synthetic
    # The lung box spans z -95..-35 mm; shifted by 50 mm, 16 of its 60 mm stay inside the CT (z up to -29 mm).
    shifted_origin_mm = (ORIGIN_MM[0], ORIGIN_MM[1], ORIGIN_MM[2] + 50.0)
    with pytest.raises(PipelineInputError, match=r"overlaps the CT by only 26\.7%"):
        build(ct, to_image(internal_zyx, origin_mm=shifted_origin_mm))


# Position and volume checks.


def test_positions_ok_for_plausible_map(synthetic):
    ct, internal_zyx = synthetic
    _, qc = build(ct, to_image(internal_zyx))
    assert all(qc["lobes"][name]["position_ok"] for name in LOBE_NAMES)


def test_lungmask_read_as_diag_rejected(synthetic):
    ct, internal_zyx = synthetic
    lungmask_zyx = in_convention(internal_zyx, CONVENTIONS["lungmask"])
    with pytest.raises(PipelineInputError, match="RLL should be posterior to RML"):
        build(ct, to_image(lungmask_zyx), "diag")


def test_lungmask_read_as_diag_warns(synthetic):
    ct, internal_zyx = synthetic
    lungmask_zyx = in_convention(internal_zyx, CONVENTIONS["lungmask"])
    _, qc = build(ct, to_image(lungmask_zyx), "diag", position_check="warn")
    assert qc["lobes"]["rml"]["position_ok"] is False
    assert qc["lobes"]["lul"]["position_ok"] is True


def test_left_right_swap_rejected(synthetic):
    ct, internal_zyx = synthetic
    mirrored_zyx = internal_zyx[:, :, ::-1].copy()
    with pytest.raises(PipelineInputError, match="should be to the left of"):
        build(ct, to_image(mirrored_zyx))


def test_missing_lobe_rejected(synthetic):
    ct, internal_zyx = synthetic
    without_rml_zyx = np.where(internal_zyx == LOBE_LABELS["rml"], 0, internal_zyx).astype(np.uint8)
    with pytest.raises(PipelineInputError, match=r"right middle lobe \(RML, label 5\): 0 ml"):
        build(ct, to_image(without_rml_zyx))


def test_small_lobe_removed_when_allowed(synthetic):
    ct, internal_zyx = synthetic
    small_zyx = np.where(internal_zyx == LOBE_LABELS["rml"], 0, internal_zyx).astype(np.uint8)
    small_zyx[20, 10, 10] = LOBE_LABELS["rml"]
    result, qc = build(ct, to_image(small_zyx), allow_missing=True)
    assert qc["missing_lobes"] == ["rml"]
    assert not np.any(sitk.GetArrayViewFromImage(result) == LOBE_LABELS["rml"])


def test_empty_map_rejected(synthetic):
    ct, internal_zyx = synthetic
    with pytest.raises(PipelineInputError, match="empty"):
        build(ct, to_image(np.zeros_like(internal_zyx)), allow_missing=True)


def test_wrong_convention_no_lobes_rejected(synthetic):
    ct, internal_zyx = synthetic
    with pytest.raises(PipelineInputError, match="labels found: \\[1, 2, 3, 4, 5\\]"):
        build(ct, to_image(internal_zyx), "totalsegmentator", allow_missing=True)


# Entry point.


def test_main_writes_outputs(tmp_path, synthetic):
    ct, internal_zyx = synthetic
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(to_image(in_convention(internal_zyx, CONVENTIONS["lungmask"])), str(tmp_path / "s1_lobes.nii.gz"))
    record = {"scan_id": "s1", "split": "train", "ct": str(tmp_path / "ct.nii.gz"), "lobes": None, "lobe_convention": "lungmask"}
    (tmp_path / "record.json").write_text(json.dumps(record))
    settings = {"cohort": {**COHORT, "lobes_dir": str(tmp_path)}, "lobes": LOBE_SETTINGS, "resample": RESAMPLE_SETTINGS}

    lobes.main(
        [
            "--record", str(tmp_path / "record.json"),
            "--out-lobes", str(tmp_path / "out" / "lobes.nii.gz"),
            "--out-qc", str(tmp_path / "out" / "qc.json"),
            "--settings", json.dumps(settings),
        ]
    )  # fmt: skip

    written = sitk.ReadImage(str(tmp_path / "out" / "lobes.nii.gz"))
    qc = json.loads((tmp_path / "out" / "qc.json").read_text())
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), internal_zyx)
    assert qc["convention"] == "lungmask"
    assert qc["missing_lobes"] == []
