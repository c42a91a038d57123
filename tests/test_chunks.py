"""Tests of interval calibration, the HDF5 chunk store, the chunk index and paste_chunk."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
import yaml

from dramseg import anatomy, chunks, settings
from dramseg.errors import PipelineInputError
from dramseg.intervals import parse_score_intervals

REPO = Path(__file__).resolve().parents[1]
CONFIG_CHUNKS = yaml.safe_load((REPO / "config.yaml").read_text())["chunks"]

SPACING_XYZ_MM = (1.4, 1.4, 1.4)
ORIGIN_XYZ_MM = (-20.0, -15.0, 100.0)
VOLUME_SHAPE_ZYX = (22, 26, 30)
# Five non-overlapping box lobes, (z, y, x) slices, each 8 x 10 x 12 voxels.
LOBE_BOXES = {
    "lul": (slice(2, 10), slice(2, 12), slice(16, 28)),
    "lll": (slice(12, 20), slice(2, 12), slice(16, 28)),
    "rul": (slice(2, 10), slice(14, 24), slice(2, 14)),
    "rll": (slice(12, 20), slice(14, 24), slice(2, 14)),
    "rml": (slice(12, 20), slice(2, 12), slice(2, 14)),
}
BOX_SHAPE_ZYX = [8, 10, 12]
SCORES = {"lul": 0, "lll": 1, "rul": 2, "rll": 3, "rml": 5}


def chunk_section(**changes) -> dict:
    """Return config.yaml's chunks section with some keys replaced."""
    section = json.loads(json.dumps(CONFIG_CHUNKS))
    section.update(changes)
    return section


def to_image(array_zyx: np.ndarray, spacing=SPACING_XYZ_MM, origin=ORIGIN_XYZ_MM) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def build_scan(folder: Path, scan_id: str, split: str, scores, with_reference: bool, seed: int = 0) -> dict:
    """Write a small resampled scan with candidate and vessel masks; return the file paths and arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lobes = np.zeros(VOLUME_SHAPE_ZYX, dtype=np.uint8)
    for lobe, box in LOBE_BOXES.items():
        lobes[box] = anatomy.LOBE_LABELS[lobe]
    inside = lobes > 0
    ct = np.full(VOLUME_SHAPE_ZYX, 50.0, dtype=np.float32)
    ct[inside] = rng.uniform(-1100.0, 500.0, size=int(inside.sum()))
    candidates = ((rng.random(VOLUME_SHAPE_ZYX) < 0.2) & inside).astype(np.uint8)
    vessels = ((rng.random(VOLUME_SHAPE_ZYX) < 0.1) & inside & (candidates == 0)).astype(np.uint8)

    paths = {name: folder / f"{name}.nii.gz" for name in ("ct", "lobes", "candidates", "vessels")}
    for name, array in (("ct", ct), ("lobes", lobes), ("candidates", candidates), ("vessels", vessels)):
        sitk.WriteImage(to_image(array), str(paths[name]))

    rows = []
    for lobe in anatomy.LOBE_NAMES:
        mask = lobes == anatomy.LOBE_LABELS[lobe]
        rows.append(dict(lobe=lobe, label=anatomy.LOBE_LABELS[lobe], voxels=int(mask.sum()),
                         volume_ml=mask.sum() * 1.4**3 / 1000, otsu_hu=-500.0,
                         candidate_voxels=int(candidates[mask].sum()), vessel_voxels=int(vessels[mask].sum()),
                         p_star=candidates[mask].mean()))
    paths["table"] = folder / "lobes.csv"
    pd.DataFrame(rows).to_csv(paths["table"], index=False)

    reference = None
    record = {"scan_id": scan_id, "split": split, "scores": scores, "reference": None}
    if with_reference:
        # Lesion labels 0..3 on a finer "original" grid (0.7 mm in x and y)
        # whose voxel 2i lies on resampled voxel i, so nearest resampling is exact.
        reference = np.zeros(VOLUME_SHAPE_ZYX, dtype=np.uint8)
        reference[3:7, 4:8, 18:24] = 1
        reference[14:18, 16:20, 4:8] = 3
        fine = np.repeat(np.repeat(reference, 2, axis=1), 2, axis=2)
        paths["reference"] = folder / "reference.nii.gz"
        sitk.WriteImage(to_image(fine, spacing=(0.7, 0.7, 1.4)), str(paths["reference"]))
        record["reference"] = str(paths["reference"])
    paths["record"] = folder / "record.json"
    paths["record"].write_text(json.dumps(record))
    arrays = {"ct": ct, "lobes": lobes, "candidates": candidates, "vessels": vessels, "reference": reference}
    return {"paths": paths, "arrays": arrays, "record": record}


def run_calibrate(scan: dict, out: Path, section: dict | None = None) -> None:
    chunks.main(["calibrate", "--record", str(scan["paths"]["record"]),
                 "--candidates-table", str(scan["paths"]["table"]), "--out", str(out),
                 "--settings", json.dumps({"chunks": section or chunk_section()})])


def run_write(scan: dict, intervals: Path, out: Path, section: dict) -> None:
    paths = scan["paths"]
    chunks.main(["write", "--record", str(paths["record"]), "--ct", str(paths["ct"]), "--lobes", str(paths["lobes"]),
                 "--candidates", str(paths["candidates"]), "--vessels", str(paths["vessels"]),
                 "--intervals", str(intervals), "--out", str(out), "--settings", json.dumps({"chunks": section})])


@pytest.fixture(scope="module")
def train_scan(tmp_path_factory):
    return build_scan(tmp_path_factory.mktemp("train"), "train-01", "train", SCORES, with_reference=False)


@pytest.fixture(scope="module")
def exact_store(train_scan, tmp_path_factory):
    """Store whose chunk shape equals every lobe's box (margin 0), so resizing is the identity."""
    folder = tmp_path_factory.mktemp("exact")
    run_calibrate(train_scan, folder / "intervals.csv")
    section = chunk_section(shape=BOX_SHAPE_ZYX, margin_voxels=0, background_value=-0.25)
    run_write(train_scan, folder / "intervals.csv", folder / "chunks.h5", section)
    return {"store": folder / "chunks.h5", "intervals": folder / "intervals.csv", "section": section}


@pytest.fixture(scope="module")
def unscored_scan(tmp_path_factory):
    return build_scan(tmp_path_factory.mktemp("test"), "test-01", "test", None, with_reference=True, seed=1)


# ---------------------------------------------------------------------------
# Calibration


@pytest.mark.parametrize(
    ("score", "p_star", "low", "high"),
    [
        (2, 0.10, 0.05, 0.15),  # p* inside [0.05, 0.25]: both bounds move towards p*
        (3, 0.10, 0.05, 0.15),  # p* below [0.25, 0.50]: the interval moves down to p* +- 0.05
        (1, 0.40, 0.01, 0.05),  # p* above [0.01, 0.05]: unchanged
        (0, 0.20, 0.0, 0.0),  # score 0 stays [0, 0]
        (0, 0.02, 0.0, 0.0),
        (4, 0.02, 0.0, 0.07),  # lower bound clipped at 0
    ],
)
def test_calibrate_lobes_formula(score, p_star, low, high):
    table = pd.DataFrame({"lobe": ["lul"], "p_star": [p_star]})
    intervals = parse_score_intervals(CONFIG_CHUNKS["score_intervals"])
    result = chunks.calibrate_lobes("s1", "train", {"lul": score}, table, intervals, 0.05)
    assert result.loc[0, "low"] == pytest.approx(low)
    assert result.loc[0, "high"] == pytest.approx(high)
    assert result.loc[0, "raw_low"] == intervals[score][0]
    assert result.loc[0, "raw_high"] == intervals[score][1]


def test_calibrate_unscored_test_scan(unscored_scan, tmp_path):
    run_calibrate(unscored_scan, tmp_path / "intervals.csv")
    table = pd.read_csv(tmp_path / "intervals.csv")
    assert list(table.columns) == list(chunks.INTERVAL_COLUMNS)
    assert list(table["lobe"]) == list(anatomy.LOBE_NAMES)
    assert (table["score"] == -1).all()
    assert table[["raw_low", "raw_high", "low", "high"]].isna().all().all()
    assert table["p_star"].notna().all()


@pytest.mark.parametrize("split", ["train", "val"])
def test_calibrate_scored_split_without_scores(split):
    table = pd.DataFrame({"lobe": ["lul"], "p_star": [0.1]})
    intervals = parse_score_intervals(CONFIG_CHUNKS["score_intervals"])
    with pytest.raises(PipelineInputError, match="scan 'case-7'.*no severity scores"):
        chunks.calibrate_lobes("case-7", split, None, table, intervals, 0.05)


def test_calibrate_missing_lobe_score():
    table = pd.DataFrame({"lobe": ["lul", "rml"], "p_star": [0.1, 0.2]})
    intervals = parse_score_intervals(CONFIG_CHUNKS["score_intervals"])
    with pytest.raises(PipelineInputError, match="lobe 'rml' has no severity score"):
        chunks.calibrate_lobes("s1", "train", {"lul": 1}, table, intervals, 0.05)


def test_calibrate_skips_lobe_absent_from_table(caplog):
    table = pd.DataFrame({"lobe": ["lul", "lll", "rul", "rll"], "p_star": [0.1] * 4})
    intervals = parse_score_intervals(CONFIG_CHUNKS["score_intervals"])
    with caplog.at_level(logging.WARNING):
        result = chunks.calibrate_lobes("s1", "train", SCORES, table, intervals, 0.05)
    assert list(result["lobe"]) == ["lul", "lll", "rul", "rll"]
    assert "lobe rml is scored but not in the candidate table" in caplog.text


def test_calibrate_cli_train_scan(train_scan, tmp_path):
    run_calibrate(train_scan, tmp_path / "intervals.csv")
    table = pd.read_csv(tmp_path / "intervals.csv").set_index("lobe")
    assert table["score"].to_dict() == SCORES
    assert (table["low"] <= table["high"]).all()


# ---------------------------------------------------------------------------
# Resizing, boxes and paste_chunk


@pytest.mark.parametrize("shape_zyx", [(16, 16, 16), (5, 7, 4), (9, 11, 13)])
def test_resize_volume_matches_torch_trilinear(shape_zyx):
    volume = np.random.default_rng(0).random((9, 11, 13)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(volume)[None, None], size=shape_zyx, mode="trilinear",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(chunks.resize_volume(volume, shape_zyx, order=1), expected, atol=1e-5)


def test_resize_volume_matches_torch_nearest_exact():
    volume = np.random.default_rng(0).integers(0, 4, (9, 11, 13)).astype(np.uint8)
    expected = F.interpolate(torch.from_numpy(volume)[None, None].float(), size=(16, 6, 20),
                             mode="nearest-exact")[0, 0].numpy()
    np.testing.assert_array_equal(chunks.resize_volume(volume, (16, 6, 20), order=0), expected)


@pytest.mark.parametrize(
    ("margin", "start", "stop"),
    [(0, (1, 2, 3), (4, 6, 8)), (2, (0, 0, 1), (6, 8, 9)), (10, (0, 0, 0), (6, 8, 9))],
)
def test_lobe_bounding_box_margin_clipped(margin, start, stop):
    mask = np.zeros((6, 8, 9), dtype=bool)
    mask[1:4, 2:6, 3:8] = True
    assert chunks.lobe_bounding_box(mask, margin) == (start, stop)


def ellipsoid_mask(shape_zyx) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, size) for size in shape_zyx], indexing="ij")
    return sum(grid**2 for grid in grids) <= 0.9


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_paste_chunk_mask_exact_at_box_shape():
    volume = np.zeros((30, 40, 35), dtype=bool)
    volume[5:25, 8:36, 4:30] = ellipsoid_mask((20, 28, 26))
    start, stop = chunks.lobe_bounding_box(volume, 0)
    box = tuple(slice(low, high) for low, high in zip(start, stop))
    pasted = chunks.paste_chunk(volume[box].astype(np.uint8), start, stop, volume.shape, order=0)
    np.testing.assert_array_equal(pasted.astype(bool), volume)


@pytest.mark.parametrize("chunk_shape_zyx", [(24, 24, 24), (32, 32, 32), (60, 40, 20)])
def test_paste_chunk_mask_dice_after_resize(chunk_shape_zyx):
    volume = np.zeros((50, 60, 55), dtype=bool)
    volume[5:45, 8:50, 4:40] = ellipsoid_mask((40, 42, 36))
    start, stop = chunks.lobe_bounding_box(volume, 2)
    box = tuple(slice(low, high) for low, high in zip(start, stop))
    chunk = chunks.resize_volume(volume[box].astype(np.uint8), chunk_shape_zyx, order=0)
    pasted = chunks.paste_chunk(chunk, start, stop, volume.shape, order=0)
    assert dice(pasted.astype(bool), volume) > 0.95


def test_paste_chunk_only_inside_lobe_mask():
    lobe_mask = np.zeros((10, 10, 10), dtype=bool)
    lobe_mask[2:6, 2:6, 2:6] = True
    lobe_mask[3, 3, 3] = False
    pasted = chunks.paste_chunk(np.ones((4, 4, 4), np.float32), (2, 2, 2), (6, 6, 6), (10, 10, 10), lobe_mask)
    np.testing.assert_array_equal(pasted, lobe_mask.astype(np.float32))


def test_paste_chunk_box_outside_volume():
    with pytest.raises(ValueError, match="does not lie inside"):
        chunks.paste_chunk(np.ones((4, 4, 4)), (0, 0, 8), (4, 4, 12), (10, 10, 10))


@pytest.mark.parametrize(
    ("hu", "expected"),
    [(-2000.0, 0.0), (-1000.0, 0.0), (-300.0, 0.5), (400.0, 1.0), (1000.0, 1.0)],
)
def test_window_intensities_rescale(hu, expected):
    result = chunks.window_intensities(np.array([hu], dtype=np.float32), (-1000.0, 400.0))
    assert result[0] == pytest.approx(expected)


# ---------------------------------------------------------------------------
# The HDF5 store


def test_store_image_round_trip_exact(train_scan, exact_store):
    arrays = train_scan["arrays"]
    expected = chunks.window_intensities(arrays["ct"], CONFIG_CHUNKS["hu_window"])
    with h5py.File(exact_store["store"], "r") as store:
        for lobe in anatomy.LOBE_NAMES:
            group = store["lobes"][lobe]
            lobe_mask = arrays["lobes"] == anatomy.LOBE_LABELS[lobe]
            start, stop = group.attrs["bbox_start_zyx"], group.attrs["bbox_stop_zyx"]
            pasted = chunks.paste_chunk(group["image"][()], start, stop, VOLUME_SHAPE_ZYX, lobe_mask)
            np.testing.assert_array_equal(pasted[lobe_mask], expected[lobe_mask])


@pytest.mark.parametrize("name", ["mask", "candidates", "vessels"])
def test_store_masks_round_trip_exact(train_scan, exact_store, name):
    arrays = train_scan["arrays"]
    with h5py.File(exact_store["store"], "r") as store:
        for lobe in anatomy.LOBE_NAMES:
            group = store["lobes"][lobe]
            lobe_mask = arrays["lobes"] == anatomy.LOBE_LABELS[lobe]
            expected = lobe_mask if name == "mask" else arrays[name] * lobe_mask
            pasted = chunks.paste_chunk(group[name][()], group.attrs["bbox_start_zyx"],
                                        group.attrs["bbox_stop_zyx"], VOLUME_SHAPE_ZYX, order=0)
            np.testing.assert_array_equal(pasted, expected.astype(np.uint8))


def test_store_root_attributes(exact_store):
    with h5py.File(exact_store["store"], "r") as store:
        assert store.attrs["scan_id"] == "train-01"
        assert store.attrs["split"] == "train"
        assert list(store.attrs["chunk_shape_zyx"]) == BOX_SHAPE_ZYX
        assert store.attrs["settings_hash"] == settings.settings_hash(exact_store["section"])
        assert store.attrs["layout_version"] == 1
        assert sorted(store["lobes"]) == sorted(anatomy.LOBE_NAMES)
        assert "reference" not in store["lobes"]["lul"]


def test_store_lobe_attributes(exact_store):
    intervals = pd.read_csv(exact_store["intervals"]).set_index("lobe")
    with h5py.File(exact_store["store"], "r") as store:
        for lobe, box in LOBE_BOXES.items():
            attributes = store["lobes"][lobe].attrs
            start_zyx = [axis.start for axis in box]
            assert attributes["label"] == anatomy.LOBE_LABELS[lobe]
            assert attributes["lobe"] == lobe
            assert attributes["score"] == SCORES[lobe]
            np.testing.assert_allclose(attributes["raw_interval"], intervals.loc[lobe, ["raw_low", "raw_high"]])
            np.testing.assert_allclose(attributes["interval"], intervals.loc[lobe, ["low", "high"]])
            assert attributes["p_star"] == pytest.approx(intervals.loc[lobe, "p_star"])
            assert list(attributes["bbox_start_zyx"]) == start_zyx
            assert list(attributes["bbox_stop_zyx"]) == [axis.stop for axis in box]
            expected_origin = np.array(ORIGIN_XYZ_MM) + 1.4 * np.array(start_zyx[::-1])
            np.testing.assert_allclose(attributes["bbox_origin_mm"], expected_origin, atol=1e-4)
            np.testing.assert_allclose(attributes["spacing_mm"], SPACING_XYZ_MM, atol=1e-6)
            assert list(attributes["source_shape_zyx"]) == BOX_SHAPE_ZYX


def test_store_datasets_compressed(exact_store):
    with h5py.File(exact_store["store"], "r") as store:
        dataset = store["lobes"]["rml"]["mask"]
        assert dataset.compression == "gzip"
        assert dataset.dtype == np.uint8
        assert store["lobes"]["rml"]["image"].dtype == np.float32


def test_store_background_value_outside_lobe(train_scan, tmp_path):
    run_calibrate(train_scan, tmp_path / "intervals.csv")
    section = chunk_section(shape=[16, 16, 16], margin_voxels=2, background_value=-0.25)
    run_write(train_scan, tmp_path / "intervals.csv", tmp_path / "chunks.h5", section)
    with h5py.File(tmp_path / "chunks.h5", "r") as store:
        group = store["lobes"]["lll"]
        image, mask = group["image"][()], group["mask"][()]
        assert list(group.attrs["source_shape_zyx"]) == [12, 14, 16]
    assert (mask == 0).any()
    assert (image[mask == 0] == -0.25).all()
    assert image[mask == 1].min() >= 0.0
    assert image[mask == 1].max() <= 1.0


def test_store_intensity_rescale(tmp_path):
    scan = build_scan(tmp_path / "in", "s1", "train", SCORES, with_reference=False)
    ct = scan["arrays"]["ct"].copy()
    ct[LOBE_BOXES["rul"]] = -300.0
    sitk.WriteImage(to_image(ct), str(scan["paths"]["ct"]))
    run_calibrate(scan, tmp_path / "intervals.csv")
    # Margin 0 keeps voxels of other HU values out of the box, so interpolation mixes only -300 HU values.
    section = chunk_section(shape=[8, 8, 8], margin_voxels=0)
    run_write(scan, tmp_path / "intervals.csv", tmp_path / "chunks.h5", section)
    with h5py.File(tmp_path / "chunks.h5", "r") as store:
        group = store["lobes"]["rul"]
        image, mask = group["image"][()], group["mask"][()]
    np.testing.assert_allclose(image[mask == 1], 0.5, atol=1e-6)


def test_store_reference_resampled(unscored_scan, tmp_path):
    run_calibrate(unscored_scan, tmp_path / "intervals.csv")
    section = chunk_section(shape=BOX_SHAPE_ZYX, margin_voxels=0)
    run_write(unscored_scan, tmp_path / "intervals.csv", tmp_path / "chunks.h5", section)
    reference = unscored_scan["arrays"]["reference"]
    with h5py.File(tmp_path / "chunks.h5", "r") as store:
        assert store.attrs["split"] == "test"
        assert store["lobes"]["lul"].attrs["score"] == -1
        assert np.isnan(store["lobes"]["lul"].attrs["interval"]).all()
        for lobe, box in LOBE_BOXES.items():
            np.testing.assert_array_equal(store["lobes"][lobe]["reference"][()], reference[box])


@pytest.mark.parametrize(
    ("origin", "label", "message"),
    [((500.0, 0.0, 0.0), 1, "lies outside the reference mask"), (ORIGIN_XYZ_MM, 4, "reference labels span 0..4")],
)
def test_resample_reference_rejects(origin, label, message):
    ct = to_image(np.zeros(VOLUME_SHAPE_ZYX, dtype=np.float32))
    labels = np.zeros(VOLUME_SHAPE_ZYX, dtype=np.uint8)
    labels[5, 5, 5] = label
    with pytest.raises(PipelineInputError, match=message):
        chunks.resample_reference("s1", to_image(labels, origin=origin), "reference.nii.gz", ct)


def test_store_grid_mismatch(train_scan, tmp_path):
    scan = build_scan(tmp_path / "in", "s1", "train", SCORES, with_reference=False)
    shifted = to_image(scan["arrays"]["candidates"], origin=(-20.0, -15.0, 103.0))
    sitk.WriteImage(shifted, str(scan["paths"]["candidates"]))
    run_calibrate(scan, tmp_path / "intervals.csv")
    with pytest.raises(PipelineInputError, match=r"origin \(-20.0, -15.0, 103.0\) mm vs \(-20.0, -15.0, 100.0\) mm"):
        run_write(scan, tmp_path / "intervals.csv", tmp_path / "chunks.h5", chunk_section(shape=[8, 8, 8]))
    assert not (tmp_path / "chunks.h5").exists()


def test_store_bad_lobe_label_leaves_no_file(tmp_path):
    scan = build_scan(tmp_path / "in", "s1", "train", SCORES, with_reference=False)
    lobes = scan["arrays"]["lobes"].copy()
    lobes[0, 0, 0] = 7
    sitk.WriteImage(to_image(lobes), str(scan["paths"]["lobes"]))
    run_calibrate(scan, tmp_path / "out" / "intervals.csv")
    with pytest.raises(PipelineInputError, match="lobe labels span 0..7, expected 0..5"):
        run_write(scan, tmp_path / "out" / "intervals.csv", tmp_path / "out" / "chunks.h5",
                  chunk_section(shape=[8, 8, 8]))
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["intervals.csv"]


def test_store_interval_of_absent_lobe(train_scan, tmp_path):
    run_calibrate(train_scan, tmp_path / "intervals.csv")
    lobes = train_scan["arrays"]["lobes"].copy()
    lobes[lobes == anatomy.LOBE_LABELS["rml"]] = 0
    ct = sitk.ReadImage(str(train_scan["paths"]["ct"]), sitk.sitkFloat32)
    masks = {name: sitk.ReadImage(str(train_scan["paths"][name])) for name in ("candidates", "vessels")}
    with pytest.raises(PipelineInputError, match=r"lobes \['rml'\] have intervals but no voxels"):
        chunks.write_chunk_store(tmp_path / "chunks.h5", train_scan["record"], ct, to_image(lobes),
                                 masks["candidates"], masks["vessels"], pd.read_csv(tmp_path / "intervals.csv"),
                                 chunk_section(shape=[8, 8, 8]))


def test_chunk_settings_invalid_shape():
    with pytest.raises(PipelineInputError, match="chunks.shape must be three positive sizes"):
        chunks.chunk_settings({"chunks": chunk_section(shape=[32, 32])})


# ---------------------------------------------------------------------------
# The chunk index


@pytest.fixture(scope="module")
def two_stores(train_scan, unscored_scan, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chunks")
    stores, intervals = [], []
    for scan in (train_scan, unscored_scan):
        scan_folder = folder / scan["record"]["scan_id"]
        run_calibrate(scan, scan_folder / "intervals.csv")
        run_write(scan, scan_folder / "intervals.csv", scan_folder / "chunks.h5", chunk_section(shape=[8, 8, 8]))
        stores.append(scan_folder / "chunks.h5")
        intervals.append(scan_folder / "intervals.csv")
    return {"folder": folder, "stores": stores, "intervals": intervals}


def test_index_rows(two_stores):
    out = two_stores["folder"] / "index.csv"
    chunks.main(["index", "--intervals", *map(str, two_stores["intervals"]),
                 "--stores", *map(str, two_stores["stores"]), "--out", str(out)])
    index = pd.read_csv(out)
    assert list(index.columns) == list(chunks.INDEX_COLUMNS)
    assert len(index) == 10
    assert list(index["scan_id"]) == ["train-01"] * 5 + ["test-01"] * 5
    assert list(index["split"]) == ["train"] * 5 + ["test"] * 5
    assert set(index["store"]) == {str(path) for path in two_stores["stores"]}
    train = index[index["split"] == "train"].set_index("lobe")
    assert train["score"].to_dict() == SCORES
    assert (index[index["split"] == "test"]["score"] == -1).all()
    assert index.loc[index["split"] == "test", ["low", "high"]].isna().all().all()


def test_index_stale_store(two_stores, tmp_path):
    table = pd.read_csv(two_stores["intervals"][0])
    table.loc[table["lobe"] == "rul", "high"] = 0.99
    stale = two_stores["stores"][0].parent / "stale" / "intervals.csv"
    stale.parent.mkdir()
    table.to_csv(stale, index=False)
    store_copy = stale.parent / "chunks.h5"
    store_copy.write_bytes(two_stores["stores"][0].read_bytes())
    with pytest.raises(PipelineInputError, match="lobe 'rul' differs from the interval table"):
        chunks.build_index([store_copy], [stale])


def test_index_interval_table_without_store(two_stores, tmp_path):
    with pytest.raises(PipelineInputError, match="no chunk store in the folder"):
        chunks.build_index(two_stores["stores"][:1], [tmp_path / "intervals.csv"])


def test_default_settings_write(train_scan, tmp_path):
    run_calibrate(train_scan, tmp_path / "intervals.csv")
    run_write(train_scan, tmp_path / "intervals.csv", tmp_path / "chunks.h5", chunk_section())
    with h5py.File(tmp_path / "chunks.h5", "r") as store:
        assert store["lobes"]["lul"]["image"].shape == tuple(CONFIG_CHUNKS["shape"])
        assert not math.isnan(float(store["lobes"]["lul"]["image"][()].mean()))
