"""Tests of ChunkDataset and chunk_loader on real HDF5 chunk stores."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from dramseg import chunks
from dramseg.dataset import ChunkDataset, chunk_loader
from dramseg.errors import PipelineInputError
from test_chunks import SCORES, build_scan, chunk_section, run_calibrate, run_write

CHUNK_SHAPE_ZYX = (8, 6, 10)


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> pd.DataFrame:
    """Chunk index of a scored train scan, a scored val scan and an unscored test scan with a reference."""
    folder = tmp_path_factory.mktemp("chunks")
    scans = [
        build_scan(folder / "in-train", "train-01", "train", SCORES, with_reference=False, seed=0),
        build_scan(folder / "in-val", "val-01", "val", {**SCORES, "rml": 4}, with_reference=False, seed=2),
        build_scan(folder / "in-test", "test-01", "test", None, with_reference=True, seed=1),
    ]
    stores = []
    for scan in scans:
        out = folder / scan["record"]["scan_id"]
        run_calibrate(scan, out / "intervals.csv")
        run_write(scan, out / "intervals.csv", out / "chunks.h5", chunk_section(shape=list(CHUNK_SHAPE_ZYX)))
        stores.append(out / "chunks.h5")
    return chunks.build_index(stores)


def test_dataset_reads_written_chunks(index):
    dataset = ChunkDataset(index, splits=("train",))
    assert len(dataset) == 5
    for item in range(len(dataset)):
        sample = dataset[item]
        row = index[(index["scan_id"] == sample["scan_id"]) & (index["lobe"] == sample["lobe"])].iloc[0]
        with h5py.File(row["store"], "r") as store:
            group = store["lobes"][sample["lobe"]]
            np.testing.assert_array_equal(sample["image"][0].numpy(), group["image"][()])
            for name in ("mask", "candidates", "vessels"):
                np.testing.assert_array_equal(sample[name].numpy(), group[name][()].astype(np.float32))
        assert sample["score"].item() == SCORES[sample["lobe"]]
        assert sample["label_positive"].item() == int(SCORES[sample["lobe"]] > 0)
        assert sample["low"].item() == pytest.approx(row["low"])
        assert sample["high"].item() == pytest.approx(row["high"])


def test_dataset_sample_types(index):
    sample = ChunkDataset(index)[0]
    assert sample["image"].shape == (1, *CHUNK_SHAPE_ZYX)
    assert sample["image"].dtype == torch.float32
    assert sample["mask"].shape == CHUNK_SHAPE_ZYX
    assert sample["mask"].dtype == torch.float32
    assert sample["low"].dtype == torch.float32
    assert sample["low"].shape == ()
    assert sample["score"].dtype == torch.int64
    assert sample["label_positive"].dtype == torch.int64
    assert "reference" not in sample


@pytest.mark.parametrize("splits", [("train",), ("train", "val"), ("test",)])
def test_dataset_cache_equals_lazy(index, splits):
    require_scores = "test" not in splits
    cached = ChunkDataset(index, splits=splits, cache_in_memory=True, require_scores=require_scores)
    lazy = ChunkDataset(index, splits=splits, cache_in_memory=False, require_scores=require_scores)
    assert len(cached) == len(lazy)
    for item in range(len(cached)):
        a, b = cached[item], lazy[item]
        for key in ("image", "mask", "candidates", "vessels", "score", "label_positive"):
            assert torch.equal(a[key], b[key]), key
        assert (a["scan_id"], a["lobe"]) == (b["scan_id"], b["lobe"])
    lazy.close()


def test_dataset_reference_tensor(index):
    dataset = ChunkDataset(index, splits=("test",), require_scores=False, with_reference=True)
    samples = [dataset[item] for item in range(len(dataset))]
    assert all(sample["reference"].dtype == torch.int64 for sample in samples)
    assert sum(int((sample["reference"] > 0).sum()) for sample in samples) > 0
    assert all(sample["score"].item() == -1 for sample in samples)
    assert all(torch.isnan(sample["low"]) for sample in samples)


def test_dataset_reference_missing(index):
    with pytest.raises(PipelineInputError, match="has no 'reference' dataset"):
        ChunkDataset(index, splits=("train",), with_reference=True)


def test_dataset_unscored_rows_rejected(index):
    with pytest.raises(PipelineInputError, match="scan 'test-01'.*5 chunks have no severity score"):
        ChunkDataset(index, splits=("test",))


def test_dataset_empty_split(index):
    with pytest.raises(PipelineInputError, match="no rows of the splits"):
        ChunkDataset(index, splits=("holdout",))


def test_dataset_index_from_csv(index, tmp_path):
    index.to_csv(tmp_path / "index.csv", index=False)
    assert len(ChunkDataset(tmp_path / "index.csv", splits=("train", "val"))) == 10


@pytest.mark.parametrize("cache_in_memory", [True, False])
def test_loader_two_workers(index, cache_in_memory):
    dataset = ChunkDataset(index, splits=("train", "val"), cache_in_memory=cache_in_memory)
    if not cache_in_memory:
        dataset[0]  # opens a handle in this process before the workers fork
    loader = chunk_loader(dataset, batch_size=4, shuffle=True, seed=3, num_workers=2)
    batches = list(loader)
    assert [len(batch["lobe"]) for batch in batches] == [4, 4, 2]
    assert batches[0]["image"].shape == (4, 1, *CHUNK_SHAPE_ZYX)
    assert sorted(sum((batch["scan_id"] for batch in batches), [])) == ["train-01"] * 5 + ["val-01"] * 5
    dataset.close()


def test_loader_seeded_order(index):
    dataset = ChunkDataset(index, splits=("train", "val"))

    def order(seed):
        loader = chunk_loader(dataset, batch_size=3, shuffle=True, seed=seed, num_workers=0)
        return [(scan_id, lobe) for batch in loader for scan_id, lobe in zip(batch["scan_id"], batch["lobe"])]

    assert order(5) == order(5)
    assert order(5) != order(6)
