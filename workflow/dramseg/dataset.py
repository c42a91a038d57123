"""PyTorch dataset over the lobe chunks listed in `results/chunks/index.csv`."""

from __future__ import annotations

import logging
import os
import random
from typing import Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from dramseg.chunks import INDEX_COLUMNS
from dramseg.errors import input_error

LOG = logging.getLogger(__name__)

LABEL_DATASETS = ("mask", "candidates", "vessels")
# The in-memory cache may take at most this fraction of the memory available
# when the dataset is built.
MAX_CACHE_FRACTION_OF_AVAILABLE = 0.5


class ChunkDataset(Dataset):
    """Lobe chunks of the given splits, one item per row of the chunk index.

    Each item is a dict: `image` [1, D, H, W] float32 in [0, 1]; `mask`,
    `candidates`, `vessels` [D, H, W] float32 0/1; `low`, `high` float32
    scalars (lesion fractions, NaN when unscored); `score` int64 (-1 when
    unscored); `label_positive` int64 (score > 0); `reference` [D, H, W]
    int64 lesion labels 0..3 (only with `with_reference`); `scan_id` and `lobe`
    strings. D, H, W are the store's `chunk_shape_zyx`.

    With `cache_in_memory` every chunk is read once here. Otherwise chunks are
    read on demand, and each process (DataLoader worker) opens its own HDF5
    handles, so no open file is shared across a fork.
    """

    def __init__(
        self,
        index_csv_or_frame: str | os.PathLike | pd.DataFrame,
        splits: Sequence[str] = ("train",),
        cache_in_memory: bool = True,
        require_scores: bool = True,
        with_reference: bool = False,
    ):
        if isinstance(index_csv_or_frame, pd.DataFrame):
            index, source = index_csv_or_frame, None
        else:
            index, source = pd.read_csv(index_csv_or_frame), index_csv_or_frame
        missing = [column for column in INDEX_COLUMNS if column not in index.columns]
        if missing:
            raise input_error(None, source, f"the chunk index lacks the columns {missing}", "Rerun index_chunks")

        self.rows = index[index["split"].isin(list(splits))].reset_index(drop=True)
        if self.rows.empty:
            raise input_error(None, source, f"the chunk index has no rows of the splits {list(splits)}",
                              "Check the cohort's split column")
        if require_scores:
            unscored = self.rows[self.rows["score"] < 0]
            if not unscored.empty:
                first = unscored.iloc[0]
                raise input_error(
                    first["scan_id"], first["store"], f"{len(unscored)} chunks have no severity score",
                    "Give scores to every train and val scan, or build the dataset with require_scores=False",
                )
        self.datasets = LABEL_DATASETS + (("reference",) if with_reference else ())
        self.with_reference = with_reference
        self._handles: dict[str, h5py.File] = {}
        self._handles_pid: int | None = None
        self._cache: dict[str, np.ndarray] | None = None
        if cache_in_memory:
            self._cache = self._read_all(source)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict:
        row = self.rows.iloc[item]
        if self._cache is not None:
            arrays = {name: values[item] for name, values in self._cache.items()}
        else:
            arrays = self._read_chunk(row)
        sample = {
            "image": torch.from_numpy(np.asarray(arrays["image"], dtype=np.float32)[None].copy()),
            "low": torch.tensor(float(row["low"]), dtype=torch.float32),
            "high": torch.tensor(float(row["high"]), dtype=torch.float32),
            "score": torch.tensor(int(row["score"]), dtype=torch.int64),
            "label_positive": torch.tensor(int(row["score"] > 0), dtype=torch.int64),
            "scan_id": str(row["scan_id"]),
            "lobe": str(row["lobe"]),
        }
        for name in LABEL_DATASETS:
            sample[name] = torch.from_numpy(arrays[name].astype(np.float32))
        if self.with_reference:
            sample["reference"] = torch.from_numpy(arrays["reference"].astype(np.int64))
        return sample

    def close(self) -> None:
        """Close the HDF5 handles this process opened."""
        if self._handles_pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles = {}
        self._handles_pid = None

    def __getstate__(self):
        # h5py handles cannot be pickled, so a spawned worker opens its own.
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_handles_pid"] = None
        return state

    def _store(self, path: str) -> h5py.File:
        if self._handles_pid != os.getpid():
            # A forked worker inherits the parent's handles. It drops them
            # unused and opens its own.
            self._handles = {}
            self._handles_pid = os.getpid()
        if path not in self._handles:
            self._handles[path] = h5py.File(path, "r")
        return self._handles[path]

    def _read_chunk(self, row) -> dict[str, np.ndarray]:
        store = self._store(str(row["store"]))
        if row["lobe"] not in store["lobes"]:
            raise input_error(row["scan_id"], row["store"], f"the store has no chunk of lobe {row['lobe']!r}",
                              "Rerun index_chunks after write_chunks")
        group = store["lobes"][row["lobe"]]
        arrays = {"image": group["image"][()]}
        for name in self.datasets:
            if name not in group:
                fix = "Give the scan a reference mask" if name == "reference" else "Rerun write_chunks"
                raise input_error(row["scan_id"], row["store"], f"lobe {row['lobe']!r} has no {name!r} dataset", fix)
            arrays[name] = group[name][()]
        return arrays

    def _read_all(self, source) -> dict[str, np.ndarray]:
        with h5py.File(self.rows["store"].iloc[0], "r") as store:
            shape_zyx = tuple(int(size) for size in store.attrs["chunk_shape_zyx"])
        voxels = int(np.prod(shape_zyx))
        bytes_needed = len(self.rows) * voxels * (4 + len(self.datasets))
        available = _available_memory_bytes()
        if available is not None and bytes_needed > MAX_CACHE_FRACTION_OF_AVAILABLE * available:
            raise input_error(
                None, source,
                f"caching {len(self.rows)} chunks needs {bytes_needed / 2**30:.1f} GiB but only "
                f"{available / 2**30:.1f} GiB of memory is available",
                "Set training.cache_in_memory to false",
            )

        cache = {"image": np.empty((len(self.rows), *shape_zyx), dtype=np.float32)}
        for name in self.datasets:
            cache[name] = np.empty((len(self.rows), *shape_zyx), dtype=np.uint8)
        for position, row in self.rows.iterrows():
            arrays = self._read_chunk(row)
            for name, values in arrays.items():
                if values.shape != shape_zyx:
                    raise input_error(
                        row["scan_id"], row["store"], f"chunk {row['lobe']!r} {name} has shape {values.shape}, "
                        f"expected {shape_zyx} like the other stores", "Rerun write_chunks with one chunks.shape",
                    )
                cache[name][position] = values
        self.close()
        LOG.info("cached %d chunks (%.1f MiB)", len(self.rows), bytes_needed / 2**20)
        return cache


def _available_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def chunk_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0
) -> DataLoader:
    """Return a DataLoader whose shuffling and worker seeds follow `seed`."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
        drop_last=False,
    )
