"""Tests of the report stage: cohort table, coronal views, attention maps, DSC, confusion and training figures."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import yaml

from dramseg import report
from dramseg.errors import PipelineInputError
from dramseg.figures import cohort, coronal, scores, training

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
REPORT_SETTINGS = dict(CONFIG["report"], dpi=60)
RESAMPLE_SETTINGS = CONFIG["resample"]
TOP_SCORE = 5

# Synthetic chest on a (z, y, x) = 24 x 30 x 40 grid, spacing x, y, z = 1.0, 1.0, 2.5 mm.
SHAPE_ZYX = (24, 30, 40)
SPACING_XYZ_MM = (1.0, 1.0, 2.5)
ORIGIN_XYZ_MM = (-20.0, -15.0, -30.0)


def png_shape(path) -> tuple[int, int]:
    """Return (height, width) in pixels of a PNG file."""
    return matplotlib.image.imread(str(path)).shape[:2]


def write_image(array_zyx: np.ndarray, path: Path, direction=None) -> Path:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(SPACING_XYZ_MM)
    image.SetOrigin(ORIGIN_XYZ_MM)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def make_record(scan_id, split, corads=None, scores_by_lobe=None, **extra) -> dict:
    record = {"scan_id": scan_id, "split": split, "corads": corads, "scores": scores_by_lobe, "source": None}
    record.update(extra)
    return record


def write_records(records, folder: Path) -> list[Path]:
    paths = []
    for record in records:
        path = folder / record["scan_id"] / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- cohort

ALL_TWO = dict.fromkeys(("lul", "lll", "rul", "rll", "rml"), 2)
HAND_RECORDS = [
    make_record("a", "train", 1, {"lul": 0, "lll": 1, "rul": 1, "rll": 5, "rml": 0}),
    make_record("b", "train", 5, ALL_TWO),
    make_record("c", "val", None, {"lul": 3, "lll": None, "rul": 4, "rll": 4, "rml": 0}),
    make_record("d", "test", 6, None),
]
# (split, column, expected count), counted by hand from HAND_RECORDS.
COHORT_CASES = [
    ("train", "scans", 2), ("train", "corads_1", 1), ("train", "corads_5", 1), ("train", "corads_unknown", 0),
    ("train", "score_0", 2), ("train", "score_1", 2), ("train", "score_2", 5), ("train", "score_5", 1),
    ("val", "scans", 1), ("val", "corads_unknown", 1), ("val", "score_4", 2), ("val", "score_unknown", 1),
    ("test", "scans", 1), ("test", "corads_6", 1), ("test", "score_unknown", 5), ("test", "score_0", 0),
    ("all", "scans", 4), ("all", "score_0", 3), ("all", "score_unknown", 6), ("all", "corads_unknown", 1),
]


@pytest.mark.parametrize("split, column, expected", COHORT_CASES)
def test_cohort_table_counts(split, column, expected):
    table = cohort.cohort_table(HAND_RECORDS, TOP_SCORE)
    assert int(table.loc[table["split"] == split, column].iloc[0]) == expected


def test_cohort_table_lobes_per_split():
    table = cohort.cohort_table(HAND_RECORDS, TOP_SCORE)
    score_columns = [column for column in table.columns if column.startswith("score_")]
    assert (table[score_columns].sum(axis=1) == 5 * table["scans"]).all()


@pytest.mark.parametrize(
    "record, message",
    [
        (make_record("x", "training"), "split is 'training'"),
        (make_record("x", "train", corads=7), "corads is 7"),
        (make_record("x", "train", scores_by_lobe={"lul": 6}), "lobe 'lul' is 6"),
        (make_record("x", "train", scores_by_lobe={"left": 1}), "unknown lobe 'left'"),
    ],
)
def test_read_records_rejects_bad_values(tmp_path, record, message):
    paths = write_records([record], tmp_path)
    with pytest.raises(PipelineInputError, match=message):
        cohort.read_records(paths, TOP_SCORE)


def test_cohort_command_writes_table_and_figure(tmp_path):
    paths = write_records(HAND_RECORDS, tmp_path / "scans")
    settings = json.dumps({"report": REPORT_SETTINGS, "chunks": CONFIG["chunks"]})
    report.main(["cohort", "--records", *map(str, paths), "--out-table", str(tmp_path / "cohort.csv"),
                 "--out-figure", str(tmp_path / "cohort.png"), "--settings", settings])
    table = pd.read_csv(tmp_path / "cohort.csv")
    assert list(table["split"]) == ["train", "val", "test", "all"]
    height, width = png_shape(tmp_path / "cohort.png")
    assert width > 500
    assert height > 200


# ---------------------------------------------------------------- coronal views


def synthetic_scan():
    """Return CT (HU), lobe labels and reference labels, all [z, y, x], with lungs and one lesion."""
    z, y, x = np.meshgrid(*(np.arange(size) for size in SHAPE_ZYX), indexing="ij")
    ct = np.full(SHAPE_ZYX, 40.0, dtype=np.float32)
    lobes = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    for centre_x, upper, lower in ((11, 3, 4), (29, 1, 2)):  # right lung at low x, left lung at high x
        lung = ((x - centre_x) / 7.0) ** 2 + ((y - 13) / 9.0) ** 2 + ((z - 12) / 9.0) ** 2 <= 1.0
        ct[lung] = -850.0
        lobes[lung & (z >= 12)] = upper
        lobes[lung & (z < 12)] = lower
    lobes[(lobes == 4) & (y < 11)] = 5  # right middle lobe: the anterior part of the lower right lung
    reference = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    lesion = ((x - 29) / 3.0) ** 2 + ((y - 16) / 3.0) ** 2 + ((z - 15) / 2.0) ** 2 <= 1.0
    reference[lesion & (x < 29)] = 1
    reference[lesion & (x >= 29)] = 2
    ct[lesion] = -300.0
    return ct, lobes, reference


def test_choose_coronal_index_most_lung():
    lung = np.zeros((4, 6, 5), dtype=bool)
    lung[:, 2, :] = True
    lung[:2, 4, :] = True
    assert coronal.choose_coronal_index(lung, "most_lung") == 2


def test_choose_coronal_index_centroid():
    lung = np.zeros((4, 6, 5), dtype=bool)
    lung[:, 1, :] = True
    lung[:, 5, :] = True
    assert coronal.choose_coronal_index(lung, "centroid") == 3


def test_choose_coronal_index_empty_mask():
    with pytest.raises(ValueError, match="lobe map is empty"):
        coronal.choose_coronal_index(np.zeros((2, 2, 2), dtype=bool), "most_lung")


@pytest.fixture()
def scan_files(tmp_path):
    ct, lobes, reference = synthetic_scan()
    probability = np.where(reference > 0, 0.9, 0.0).astype(np.float32)
    files = {
        "ct": write_image(ct, tmp_path / "ct.nii.gz"),
        "lobes": write_image(lobes, tmp_path / "lobes.nii.gz"),
        "reference": write_image(reference, tmp_path / "reference.nii.gz"),
        "dram": write_image(probability * 0.7, tmp_path / "dram.nii.gz"),
        "proposed": write_image(probability, tmp_path / "proposed.nii.gz"),
    }
    record = make_record("scan01", "test", ct=str(files["ct"]), reference=str(files["reference"]),
                         source="tcga", dicom_series=None)
    return record, files


def test_coronal_figure_written(tmp_path, scan_files):
    record, files = scan_files
    out = tmp_path / "figures" / "coronal" / "scan01.png"
    view = coronal.write_coronal(record, files["lobes"], {"dram": files["dram"], "proposed": files["proposed"]},
                                 REPORT_SETTINGS, RESAMPLE_SETTINGS, out)
    assert view.reference.any()
    height, width = png_shape(out)
    assert width > height


def test_coronal_view_same_for_flipped_direction(tmp_path, scan_files):
    record, files = scan_files
    ct, lobes, reference = synthetic_scan()
    # The same anatomy stored with the x axis reversed (voxel i lies at x = origin - i * spacing):
    # brought to the display orientation, it gives the same view.
    flipped = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    ct_flipped = write_image(ct[:, :, ::-1].copy(), tmp_path / "ct_flipped.nii.gz", flipped)
    lobes_flipped = write_image(lobes[:, :, ::-1].copy(), tmp_path / "lobes_flipped.nii.gz", flipped)
    flipped_record = dict(record, ct=str(ct_flipped), reference=None)
    plain_record = dict(record, reference=None)
    plain = coronal.write_coronal(plain_record, files["lobes"], {}, REPORT_SETTINGS, RESAMPLE_SETTINGS, tmp_path / "a.png")
    mirrored = coronal.write_coronal(flipped_record, lobes_flipped, {}, REPORT_SETTINGS, RESAMPLE_SETTINGS, tmp_path / "b.png")
    assert np.array_equal(plain.lung, mirrored.lung)


def test_coronal_rows_run_superior(tmp_path, scan_files):
    record, files = scan_files
    view = coronal.write_coronal(record, files["lobes"], {}, REPORT_SETTINGS, RESAMPLE_SETTINGS, tmp_path / "c.png")
    # The lesion lies above the lungs' centre (z 15 against 12); the view's rows
    # run superior (drawn with origin "lower"), so its rows are in the upper half.
    lesion_rows = np.nonzero(view.reference.any(axis=1))[0]
    lung_rows = np.nonzero(view.lung.any(axis=1))[0]
    assert lesion_rows.min() > (lung_rows.min() + lung_rows.max()) / 2


def test_coronal_rejects_shifted_origin(tmp_path, scan_files):
    record, files = scan_files
    shifted = sitk.ReadImage(str(files["dram"]))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    path = tmp_path / "shifted.nii.gz"
    sitk.WriteImage(shifted, str(path))
    with pytest.raises(PipelineInputError, match="origin"):
        coronal.write_coronal(record, files["lobes"], {"dram": path}, REPORT_SETTINGS, RESAMPLE_SETTINGS, tmp_path / "e.png")


def test_coronal_rejects_other_grid(tmp_path, scan_files):
    record, files = scan_files
    small = write_image(np.zeros((24, 30, 20), dtype=np.float32), tmp_path / "small.nii.gz")
    with pytest.raises(PipelineInputError, match="dram probability map has size"):
        coronal.write_coronal(record, files["lobes"], {"dram": small}, REPORT_SETTINGS, RESAMPLE_SETTINGS, tmp_path / "d.png")


# ---------------------------------------------------------------- DSC, subtypes and confusion


def evaluation_result(method, scan_id, dsc, reference_scores, predicted_scores):
    return {"method": method, "scan_id": scan_id, "dsc": dsc,
            "reference_scores": reference_scores, "predicted_scores": predicted_scores}


RESULTS = [
    evaluation_result("dram", "s1", 0.5, {"lul": 0, "lll": 2, "rul": 3, "rll": 5, "rml": 1},
                      {"lul": 0, "lll": 2, "rul": 2, "rll": 4, "rml": 1}),
    evaluation_result("dram", "s2", 0.6, {"lul": 2, "lll": 2, "rul": 0, "rll": 1, "rml": 1},
                      {"lul": 3, "lll": 2, "rul": 0, "rll": 1, "rml": 0}),
    evaluation_result("dram", "s3", None, None, {"lul": 0, "lll": 0, "rul": 0, "rll": 0, "rml": 0}),
    evaluation_result("proposed", "s1", 0.7, {"lul": 0}, {"lul": 0, "lll": 1}),
    evaluation_result("proposed", "s2", 0.8, {}, {"lul": 1}),
]


def test_confusion_counts_hand_count():
    expected = np.zeros((6, 6), dtype=int)
    for reference_score, predicted_score in [(0, 0), (2, 2), (3, 2), (5, 4), (1, 1), (2, 3), (2, 2), (0, 0), (1, 1), (1, 0)]:
        expected[reference_score, predicted_score] += 1
    counts = scores.confusion_counts([result for result in RESULTS if result["method"] == "dram"], TOP_SCORE)
    assert np.array_equal(counts, expected)


def test_confusion_counts_skip_unscored_lobes():
    counts = scores.confusion_counts([result for result in RESULTS if result["method"] == "proposed"], TOP_SCORE)
    assert counts.sum() == 1


def test_confusion_counts_reject_score_above_top():
    result = evaluation_result("dram", "s9", 0.1, {"lul": 6}, {"lul": 1})
    with pytest.raises(PipelineInputError, match="expected 0 to 5"):
        scores.confusion_counts([result], TOP_SCORE)


def test_confusion_figure_written(tmp_path):
    counts = scores.confusion_counts(RESULTS[:3], TOP_SCORE)
    scores.plot_confusion(counts, "dram", None, tmp_path / "confusion_dram.png", dpi=60)
    height, width = png_shape(tmp_path / "confusion_dram.png")
    assert min(height, width) > 200


def test_dsc_frame_keeps_missing_as_nan():
    frame = scores.dsc_frame(RESULTS)
    assert frame["dsc_pct"].isna().sum() == 1


def test_dsc_figure_written(tmp_path):
    scores.plot_dsc(scores.dsc_frame(RESULTS), ["dram", "proposed"], "note", tmp_path / "dsc.png", dpi=60)
    height, width = png_shape(tmp_path / "dsc.png")
    assert width > 300
    assert height > 200


def test_dsc_figure_without_references(tmp_path):
    frame = scores.dsc_frame([RESULTS[2]])
    scores.plot_dsc(frame, ["dram"], None, tmp_path / "dsc.png", dpi=60)
    assert (tmp_path / "dsc.png").stat().st_size > 0


def test_subtype_shares_of_reference(tmp_path):
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0, 0, :2] = 1
    labels[1, 0, :] = 2
    labels[2, 0, :2] = 3
    path = write_image(labels, tmp_path / "reference.nii.gz")
    assert scores.subtype_shares("s1", path) == {"ggo": 0.25, "consolidation": 0.5, "mixed": 0.25}


def test_dsc_subtypes_figure_written(tmp_path):
    shares = {"s1": {"ggo": 0.2, "consolidation": 0.5, "mixed": 0.3}, "s2": {"ggo": 1.0, "consolidation": 0.0, "mixed": 0.0}}
    scores.plot_dsc_subtypes(scores.dsc_frame(RESULTS), shares, ["dram", "proposed"], None, tmp_path / "sub.png", dpi=60)
    height, width = png_shape(tmp_path / "sub.png")
    assert width > 2 * height


# ---------------------------------------------------------------- training curves


def test_training_figure_written(tmp_path):
    histories = {}
    for index, method in enumerate(("dram", "proposed", "cam")):
        path = tmp_path / f"{method}.csv"
        epochs = np.arange(1, 7)
        pd.DataFrame({"epoch": epochs, "train_loss": 1.0 / epochs + index, "val_loss": 1.2 / epochs + index,
                      "seconds": 1.0, "val_in_interval": 0.5}).to_csv(path, index=False)
        histories[method] = training.read_history(method, path)
    training.plot_training(histories, True, None, tmp_path / "training.png", dpi=60)
    height, width = png_shape(tmp_path / "training.png")
    assert width > 2 * height


def test_read_history_rejects_missing_columns(tmp_path):
    path = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [1], "loss": [0.5]}).to_csv(path, index=False)
    with pytest.raises(PipelineInputError, match="lacks the columns"):
        training.read_history("dram", path)


def test_parse_pairs_rejects_missing_separator():
    with pytest.raises(SystemExit, match="NAME=PATH"):
        report.parse_pairs(["dram"], "--history")


# ---------------------------------------------------------------- attention maps

MODEL_SETTINGS = {"base_width": 2, "depth": 2, "norm": "batch", "activation": "relu", "attention_channels": 2}
CHUNK_SHAPE_ZYX = (16, 16, 16)


def attention_settings() -> dict:
    return {
        "method": {"kind": "regression", "er": True, "ref": True, "attention": True},
        "model": MODEL_SETTINGS,
        "chunks": dict(CONFIG["chunks"], shape=list(CHUNK_SHAPE_ZYX)),
        "resample": dict(CONFIG["resample"]),
    }


def write_store(path: Path, reference_fractions: dict[str, float]) -> None:
    """Write a chunk store whose lobes have a reference lesion filling the given share of the lobe mask."""
    generator = np.random.default_rng(1)
    with h5py.File(path, "w") as store:
        for lobe, fraction in reference_fractions.items():
            group = store.create_group(f"lobes/{lobe}")
            mask = np.zeros(CHUNK_SHAPE_ZYX, dtype=np.uint8)
            mask[2:14, 2:14, 2:14] = 1
            reference = np.zeros(CHUNK_SHAPE_ZYX, dtype=np.uint8)
            reference[2:14, 2:14, 2 : 2 + int(round(12 * fraction))] = 1
            group["image"] = (generator.random(CHUNK_SHAPE_ZYX) * mask).astype(np.float32)
            group["mask"] = mask
            group["candidates"] = reference
            group["reference"] = reference
            group.attrs["p_star"] = fraction


@pytest.fixture()
def attention_model(tmp_path):
    models = pytest.importorskip("dramseg.models", reason="dramseg.models is not importable yet")
    train = pytest.importorskip("dramseg.train", reason="dramseg.train is not importable yet")
    torch.manual_seed(0)
    model = models.build_model("regression", MODEL_SETTINGS, attention=True)
    payload = train.model_metadata("proposed", attention_settings())
    payload.update({"state_dict": model.state_dict(), "epoch": 1, "val_loss": 0.1, "settings_hash": "test"})
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    return path


def test_attention_figure_written(tmp_path, attention_model):
    from dramseg.figures import attention

    write_store(tmp_path / "a.h5", {"lul": 0.25, "rll": 0.5})
    write_store(tmp_path / "b.h5", {"rul": 0.75, "lll": 0.1})
    rows = attention.write_attention(attention_model, {"a": tmp_path / "a.h5", "b": tmp_path / "b.h5"},
                                     attention_settings(), None, tmp_path / "attention.png", dpi=60)
    assert [row.lobe for row in rows] == ["rll", "rul"]
    height, width = png_shape(tmp_path / "attention.png")
    assert width > 400
    assert height > 250


def test_attention_maps_are_probabilities(tmp_path, attention_model):
    from dramseg.figures import attention

    write_store(tmp_path / "a.h5", {"lul": 0.25})
    rows = attention.write_attention(attention_model, {"a": tmp_path / "a.h5"}, attention_settings(), None,
                                     tmp_path / "attention.png", dpi=60)
    assert rows[0].after.min() >= 0.0
    assert rows[0].after.max() <= 1.0
