"""Tests of the candidate lesion stage: per-lobe Otsu threshold, vessel removal, p* and input checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from dramseg import candidates
from dramseg.errors import PipelineInputError

SPACING_XYZ_MM = (1.4, 1.4, 1.4)
SECTION = {
    "vessel_scales_mm": [0.8, 1.0, 1.5, 2.0, 4.0],
    "frangi_alpha": 0.5,
    "frangi_beta": 0.5,
    "frangi_gamma": 15.0,
    "vessel_threshold": 0.5,
    "otsu_bins": 256,
}
# Vesselness is below 1, so this threshold marks no vessel.
NO_VESSELS = {**SECTION, "vessel_threshold": 0.999999}


def settings(**changes) -> candidates.CandidateSettings:
    return candidates.CandidateSettings.from_section({**SECTION, **changes})


def two_lobe_volume() -> tuple[np.ndarray, np.ndarray]:
    """Lobe 1 (z < 16) with -900 / -700 HU halves and lobe 3 (z >= 16) with -300 / 0 HU halves."""
    ct_zyx = np.full((32, 24, 24), -900.0, np.float32)
    lobes_zyx = np.zeros(ct_zyx.shape, np.uint8)
    lobes_zyx[:16] = 1
    lobes_zyx[16:] = 3
    ct_zyx[:16, :, 12:] = -700.0
    ct_zyx[16:] = -300.0
    ct_zyx[16:, :, 12:] = 0.0
    return ct_zyx, lobes_zyx


def tube_and_blob_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One lobe of -850 HU parenchyma with a 0 HU tube along x and a -100 HU ball.

    Returns (ct, lobes, tube axis voxels, ball centre voxels).
    """
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:40, :40, :40]
    ct_zyx = (-850.0 + rng.normal(0.0, 15.0, z.shape)).astype(np.float32)
    tube = (z - 12) ** 2 + (y - 20) ** 2 <= 2.0**2
    ball = (z - 28) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 5.0**2
    ct_zyx[tube] = 0.0
    ct_zyx[ball] = -100.0
    lobes_zyx = np.ones(z.shape, np.uint8)
    tube_axis = (z == 12) & (y == 20) & (x >= 8) & (x < 32)
    ball_centre = (z - 28) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 2.0**2
    return ct_zyx, lobes_zyx, tube_axis, ball_centre


def write_pair(tmp_path, ct_zyx, lobes_zyx, lobes_spacing=SPACING_XYZ_MM, lobes_origin=(0.0, 0.0, 0.0)):
    ct = sitk.GetImageFromArray(ct_zyx)
    ct.SetSpacing(SPACING_XYZ_MM)
    lobes = sitk.GetImageFromArray(lobes_zyx)
    lobes.SetSpacing(lobes_spacing)
    lobes.SetOrigin(lobes_origin)
    ct_path, lobes_path = tmp_path / "ct.nii.gz", tmp_path / "lobes.nii.gz"
    sitk.WriteImage(ct, str(ct_path))
    sitk.WriteImage(lobes, str(lobes_path))
    return ct_path, lobes_path


def run_main(tmp_path, ct_path, lobes_path, section=SECTION):
    outputs = {name: tmp_path / "out" / name for name in ("candidates.nii.gz", "vessels.nii.gz", "lobes.csv")}
    candidates.main([
        "--ct", str(ct_path), "--lobes", str(lobes_path),
        "--out-candidates", str(outputs["candidates.nii.gz"]), "--out-vessels", str(outputs["vessels.nii.gz"]),
        "--out-table", str(outputs["lobes.csv"]), "--scan-id", "s1", "--threads", "2",
        "--settings", json.dumps({"candidates": section}),
    ])
    return outputs


def test_otsu_separates_two_intensities():
    values = np.concatenate([np.full(500, -850.0), np.full(300, -100.0)])
    threshold = candidates.lobe_otsu_threshold(values, 256)
    assert -850.0 <= threshold < -100.0


def test_otsu_of_constant_lobe_is_its_value():
    assert candidates.lobe_otsu_threshold(np.full(10, -800.0), 256) == -800.0


def test_candidates_use_otsu_per_lobe():
    ct_zyx, lobes_zyx = two_lobe_volume()
    candidates_zyx, _, table = candidates.find_candidates(
        ct_zyx, lobes_zyx, SPACING_XYZ_MM, candidates.CandidateSettings.from_section(NO_VESSELS)
    )
    rows = table.set_index("lobe")
    # A single threshold for both lobes would leave lobe 1 without candidates.
    assert -900.0 <= rows.loc["lul", "otsu_hu"] < -700.0
    assert -300.0 <= rows.loc["rul", "otsu_hu"] < 0.0
    expected = np.zeros(ct_zyx.shape, bool)
    expected[:, :, 12:] = True
    assert np.array_equal(candidates_zyx.astype(bool), expected)


def test_p_star_is_exact_fraction():
    ct_zyx, lobes_zyx = two_lobe_volume()
    candidates_zyx, _, table = candidates.find_candidates(
        ct_zyx, lobes_zyx, SPACING_XYZ_MM, candidates.CandidateSettings.from_section(NO_VESSELS)
    )
    rows = table.set_index("lobe")
    assert rows.loc["lul", "voxels"] == 16 * 24 * 24
    assert rows.loc["lul", "candidate_voxels"] == 16 * 24 * 12
    assert rows.loc["lul", "p_star"] == 0.5
    assert rows.loc["rul", "candidate_voxels"] == int(candidates_zyx[16:].sum())
    assert np.isclose(rows.loc["lul", "volume_ml"], 16 * 24 * 24 * 1.4**3 / 1000.0)


def test_missing_lobes_are_skipped():
    ct_zyx, lobes_zyx = two_lobe_volume()
    _, _, table = candidates.find_candidates(ct_zyx, lobes_zyx, SPACING_XYZ_MM, settings())
    assert list(table["lobe"]) == ["lul", "rul"]
    assert list(table["label"]) == [1, 3]
    assert list(table.columns) == list(candidates.TABLE_COLUMNS)


def test_vessel_tube_is_not_candidate():
    ct_zyx, lobes_zyx, tube_axis, ball_centre = tube_and_blob_volume()
    candidates_zyx, vessels_zyx, table = candidates.find_candidates(
        ct_zyx, lobes_zyx, SPACING_XYZ_MM, settings(), threads=2
    )
    assert np.all(vessels_zyx[tube_axis] == 1)
    assert np.all(candidates_zyx[tube_axis] == 0)
    assert np.all(candidates_zyx[ball_centre] == 1)
    assert np.all(vessels_zyx[ball_centre] == 0)
    assert table.loc[0, "vessel_voxels"] == int(vessels_zyx.sum())


def test_main_writes_masks_and_table(tmp_path):
    ct_zyx, lobes_zyx, tube_axis, _ = tube_and_blob_volume()
    lobes_zyx[:, :, :4] = 0
    ct_path, lobes_path = write_pair(tmp_path, ct_zyx, lobes_zyx)
    outputs = run_main(tmp_path, ct_path, lobes_path)
    vessels_image = sitk.ReadImage(str(outputs["vessels.nii.gz"]))
    candidates_image = sitk.ReadImage(str(outputs["candidates.nii.gz"]))
    table = pd.read_csv(outputs["lobes.csv"])
    assert vessels_image.GetPixelID() == sitk.sitkUInt8
    assert candidates_image.GetPixelID() == sitk.sitkUInt8
    assert vessels_image.GetSpacing() == pytest.approx(SPACING_XYZ_MM)
    assert not np.any(sitk.GetArrayFromImage(vessels_image)[:, :, :4])
    assert np.all(sitk.GetArrayFromImage(vessels_image)[tube_axis] == 1)
    assert list(table.columns) == list(candidates.TABLE_COLUMNS)
    assert table.loc[0, "p_star"] == sitk.GetArrayFromImage(candidates_image).sum() / table.loc[0, "voxels"]


@pytest.mark.parametrize(
    ("lobes_spacing", "lobes_origin"),
    [((1.4, 1.4, 2.0), (0.0, 0.0, 0.0)), (SPACING_XYZ_MM, (0.0, 5.0, 0.0))],
)
def test_main_rejects_grid_mismatch(tmp_path, lobes_spacing, lobes_origin):
    ct_zyx, lobes_zyx = two_lobe_volume()
    ct_path, lobes_path = write_pair(tmp_path, ct_zyx, lobes_zyx, lobes_spacing, lobes_origin)
    with pytest.raises(PipelineInputError, match=r"not on the CT grid: CT has size .* lobe map has size"):
        run_main(tmp_path, ct_path, lobes_path)


@pytest.mark.parametrize(
    ("label", "message"),
    [(7, r"labels outside 0..5 .*\{7: "), (0, "no lobe voxels")],
)
def test_main_rejects_invalid_labels(tmp_path, label, message):
    ct_zyx, lobes_zyx = two_lobe_volume()
    lobes_zyx[:] = 0 if label == 0 else lobes_zyx
    lobes_zyx[0, 0, :3] = label
    ct_path, lobes_path = write_pair(tmp_path, ct_zyx, lobes_zyx)
    with pytest.raises(PipelineInputError, match=message):
        run_main(tmp_path, ct_path, lobes_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [("vessel_threshold", 1.0), ("otsu_bins", 1), ("vessel_scales_mm", []), ("frangi_gamma", 0.0)],
)
def test_settings_reject_invalid_values(key, value):
    with pytest.raises(ValueError, match=key):
        settings(**{key: value})
