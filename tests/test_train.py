"""Real short training runs on tiny synthetic lobe chunks stored in HDF5 files."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dramseg.anatomy import LOBE_LABELS, LOBE_NAMES
from dramseg.train import compute_loss, train_method

CHUNK = 16


def make_chunk(rng: np.random.Generator, fraction: float) -> dict[str, np.ndarray]:
    """A spherical lobe whose brightest `fraction` of voxels is a lesion blob on one side."""
    z, y, x = np.mgrid[:CHUNK, :CHUNK, :CHUNK]
    centre = (CHUNK - 1) / 2
    mask = ((z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2) <= (CHUNK / 2 - 1) ** 2
    # Lesions grow from one face of the lobe: voxels ordered by x and a little noise.
    order = x + 0.3 * rng.standard_normal(mask.shape)
    lesion = np.zeros_like(mask)
    count = int(round(fraction * mask.sum()))
    if count:
        inside = np.flatnonzero(mask)
        lesion.flat[inside[np.argsort(order.flat[inside])[:count]]] = True
    image = np.where(mask, 0.1, 0.0) + np.where(lesion, 0.5, 0.0) + 0.02 * rng.standard_normal(mask.shape)
    return {
        "image": np.where(mask, image, 0.0).astype(np.float32),
        "mask": mask.astype(np.uint8),
        "candidates": lesion.astype(np.uint8),
        "vessels": np.zeros_like(mask, dtype=np.uint8),
        "reference": lesion.astype(np.uint8),
    }


@pytest.fixture(scope="module")
def index_csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    fractions = [0.0, 0.03, 0.15, 0.35, 0.6]
    rows = []
    for scan_number, split in enumerate(["train", "train", "train", "val"]):
        scan_id = f"scan{scan_number}"
        store_path = folder / f"{scan_id}.h5"
        with h5py.File(store_path, "w") as store:
            store.attrs["scan_id"] = scan_id
            store.attrs["split"] = split
            store.attrs["chunk_shape_zyx"] = [CHUNK] * 3
            for lobe_number, lobe in enumerate(LOBE_NAMES):
                fraction = fractions[(lobe_number + scan_number) % len(fractions)]
                score = {0.0: 0, 0.03: 1, 0.15: 2, 0.35: 3, 0.6: 4}[fraction]
                low, high = (0.0, 0.0) if score == 0 else (max(fraction - 0.04, 0.0), fraction + 0.04)
                group = store.create_group(f"lobes/{lobe}")
                for name, array in make_chunk(rng, fraction).items():
                    group.create_dataset(name, data=array)
                group.attrs.update({"label": LOBE_LABELS[lobe], "score": score, "interval": [low, high]})
                rows.append(
                    {"scan_id": scan_id, "split": split, "lobe": lobe, "store": str(store_path),
                     "score": score, "low": low, "high": high, "p_star": fraction}
                )
    path = folder / "index.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def base_settings(repository):
    config = yaml.safe_load((repository / "config.yaml").read_text())
    settings = {key: copy.deepcopy(config[key]) for key in ("device", "allow_cpu_fallback", "seed", "model", "training", "chunks", "resample")}
    settings["chunks"]["shape"] = [CHUNK] * 3
    settings["model"].update({"base_width": 4, "depth": 2})
    settings["training"].update({"epochs": 3, "batch_size": 5, "learning_rate": 0.01, "checkpoint_every": 1})
    return settings


def method_settings(base_settings, kind="regression", er=False, ref=False, attention=False, epochs=None):
    settings = copy.deepcopy(base_settings)
    settings["method"] = {"kind": kind, "er": er, "ref": ref, "attention": attention}
    if epochs is not None:
        settings["training"]["epochs"] = epochs
    return settings


def run(tmp_path, index_csv, settings, name="dram", stop_after_epoch=None):
    out = tmp_path / name
    train_method(
        name, index_csv, out / "model.pt", out / "history.csv", out / "checkpoints", settings,
        threads=1, stop_after_epoch=stop_after_epoch,
    )
    return out


def test_regression_loss_decreases_into_intervals(tmp_path, index_csv, base_settings):
    out = run(tmp_path, index_csv, method_settings(base_settings, epochs=25))
    history = pd.read_csv(out / "history.csv")
    assert history["train_loss"].iloc[-3:].mean() < 0.5 * history["train_loss"].iloc[:3].mean()
    assert history["train_in_interval"].iloc[-1] > history["train_in_interval"].iloc[0]
    assert history["train_in_interval"].iloc[-1] >= 0.6


def test_model_file_carries_settings(tmp_path, index_csv, base_settings):
    out = run(tmp_path, index_csv, method_settings(base_settings, epochs=1))
    payload = torch.load(out / "model.pt", weights_only=False)
    assert payload["chunk_shape_zyx"] == [CHUNK] * 3
    assert payload["model"]["base_width"] == 4
    assert payload["label_order"] == list(LOBE_NAMES)
    assert payload["kind"] == "regression"


def test_resume_matches_uninterrupted(tmp_path, index_csv, base_settings):
    settings = method_settings(base_settings, er=True, ref=True, epochs=4)
    uninterrupted = run(tmp_path / "a", index_csv, settings)
    interrupted = tmp_path / "b"
    run(interrupted, index_csv, settings, stop_after_epoch=2)
    assert not (interrupted / "dram" / "model.pt").exists()
    resumed = run(interrupted, index_csv, settings)
    first = pd.read_csv(uninterrupted / "history.csv")
    second = pd.read_csv(resumed / "history.csv")
    np.testing.assert_allclose(first["train_loss"], second["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(first["val_loss"], second["val_loss"], rtol=1e-5)


def test_checkpoint_with_other_settings_ignored(tmp_path, index_csv, base_settings, caplog):
    run(tmp_path, index_csv, method_settings(base_settings, epochs=2), stop_after_epoch=1)
    changed = method_settings(base_settings, epochs=2)
    changed["training"]["learning_rate"] = 0.02
    run(tmp_path, index_csv, changed)
    assert "made with other settings" in caplog.text


@pytest.mark.parametrize(
    "kind, er, ref, attention",
    [
        ("regression", True, True, True),
        ("regression", False, False, True),
        ("dcam", False, False, False),
        ("cam", False, False, False),
        ("supervised", False, False, False),
    ],
)
def test_every_kind_trains(tmp_path, index_csv, base_settings, kind, er, ref, attention):
    out = run(tmp_path, index_csv, method_settings(base_settings, kind, er, ref, attention, epochs=1), name=kind)
    history = pd.read_csv(out / "history.csv")
    assert np.isfinite(history["train_loss"]).all()
    assert (out / "model.pt").exists()


def test_compute_loss_has_every_part(index_csv, base_settings):
    from dramseg.dataset import ChunkDataset
    from dramseg.models import build_model

    settings = method_settings(base_settings, er=True, ref=True, attention=True)
    model = build_model("regression", settings["model"], attention=True)
    dataset = ChunkDataset(index_csv, splits=("train",))
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    terms = compute_loss(model, batch, settings["method"], settings["training"], torch.Generator().manual_seed(0))
    assert set(terms.parts) == {"interval", "ref", "er"}
    assert torch.isfinite(terms.total)


def test_cuda_without_gpu_rejected(tmp_path, index_csv, base_settings):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    settings = method_settings(base_settings, epochs=1)
    settings["device"] = "cuda"
    with pytest.raises(RuntimeError, match="allow_cpu_fallback"):
        run(tmp_path, index_csv, settings)


def test_cuda_fallback_allowed(tmp_path, index_csv, base_settings):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    settings = method_settings(base_settings, epochs=1)
    settings.update({"device": "cuda", "allow_cpu_fallback": True})
    out = run(tmp_path, index_csv, settings)
    assert (out / "model.pt").exists()


@pytest.mark.parametrize("selection", ["best_val", "last"])
def test_selection_picks_epoch(tmp_path, index_csv, base_settings, selection):
    settings = method_settings(base_settings, epochs=4)
    settings["training"]["selection"] = selection
    out = run(tmp_path, index_csv, settings)
    history = pd.read_csv(out / "history.csv")
    payload = torch.load(out / "model.pt", weights_only=False)
    expected = int(history.loc[history["val_loss"].idxmin(), "epoch"]) if selection == "best_val" else 4
    assert payload["epoch"] == expected
