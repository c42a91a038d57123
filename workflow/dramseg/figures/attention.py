"""Dense maps of lobe chunks before and after the attention module (Xie et al.'s Fig. 3)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import h5py
import matplotlib.pyplot as plt
import numpy as np
import torch

from dramseg.anatomy import LOBE_NAMES, LOBE_TITLES
from dramseg.errors import input_error
from dramseg.figures.common import add_note, save_png
from dramseg.infer import load_model

LESION_CHANNEL = 2  # regression classes: background, vessel, lesion


@dataclass
class ChunkMaps:
    """One lobe chunk's axial slice: image, lesion maps before and after attention, candidates; all [y, x]."""

    scan_id: str
    lobe: str
    slice_index_z: int
    image: np.ndarray
    mask: np.ndarray
    before: np.ndarray
    after: np.ndarray
    candidates: np.ndarray
    reference: np.ndarray | None


def read_chunk(scan_id: str, path: str | os.PathLike) -> dict:
    """Read the most affected lobe chunk of a scan's store.

    The chunk with the largest reference lesion share is chosen when the store
    has reference masks, otherwise the one with the largest candidate share
    (p_star). Returns lobe, image, mask, candidates and reference (or None), all [z, y, x].
    """
    try:
        with h5py.File(path, "r") as store:
            lobes = store.get("lobes")
            names = [name for name in LOBE_NAMES if lobes is not None and name in lobes]
            if not names:
                raise input_error(scan_id, path, "the chunk store contains no lobe chunks", "Check the lobe QC of this scan")

            def affected_share(name):
                group = lobes[name]
                mask = group["mask"][...] > 0
                if "reference" in group:
                    return float(np.count_nonzero((group["reference"][...] > 0) & mask)) / max(np.count_nonzero(mask), 1)
                return float(group.attrs.get("p_star", 0.0))

            lobe = max(names, key=affected_share)
            group = lobes[lobe]
            return {
                "lobe": lobe,
                "image": group["image"][...].astype(np.float32),
                "mask": group["mask"][...] > 0,
                "candidates": group["candidates"][...] > 0,
                "reference": (group["reference"][...] > 0) if "reference" in group else None,
            }
    except OSError as error:
        raise input_error(scan_id, path, f"the chunk store could not be read ({error})", "Delete it and rerun the chunks stage") from error


def chunk_maps(model: torch.nn.Module, scan_id: str, chunk: Mapping) -> ChunkMaps:
    """Run one chunk through a regression model with attention and cut the axial slice through the lobe's centre.

    The model must return `probabilities` and `probabilities_before_attention` ([B, 3, D, H, W]).
    """
    image = torch.from_numpy(chunk["image"][None, None])
    with torch.inference_mode():
        output = model(image)
    if "probabilities_before_attention" not in output:
        raise ValueError("the model has no attention module, so there is no map before attention to show")
    before = output["probabilities_before_attention"][0, LESION_CHANNEL].float().numpy()
    after = output["probabilities"][0, LESION_CHANNEL].float().numpy()
    per_slice = chunk["mask"].sum(axis=(1, 2))
    z = int(round(float(np.average(np.arange(per_slice.size), weights=per_slice)))) if per_slice.any() else per_slice.size // 2
    reference = chunk["reference"]
    return ChunkMaps(
        scan_id=scan_id,
        lobe=chunk["lobe"],
        slice_index_z=z,
        image=chunk["image"][z],
        mask=chunk["mask"][z],
        before=before[z],
        after=after[z],
        candidates=chunk["candidates"][z],
        reference=None if reference is None else reference[z],
    )


def plot_attention(rows: Sequence[ChunkMaps], method: str, note: str | None, path, dpi: int) -> None:
    """Draw one row per chunk: image, lesion map before attention, after attention, candidates (+ reference contour)."""
    figure, axes_grid = plt.subplots(len(rows), 4, figsize=(12.5, 3.2 * len(rows) + 0.8), squeeze=False)
    titles = ("chunk image (HU window scaled to 0-1)", "dRAM before attention", "dRAM after attention", "candidate lesions")
    dense = None
    for row_index, (axes_row, maps) in enumerate(zip(axes_grid, rows)):
        axes_row[0].imshow(maps.image, cmap="gray", vmin=0.0, vmax=1.0)
        for axes, values in zip(axes_row[1:3], (maps.before, maps.after)):
            dense = axes.imshow(np.where(maps.mask, values, np.nan), cmap="turbo", vmin=0.0, vmax=1.0)
        axes_row[3].imshow(maps.image, cmap="gray", vmin=0.0, vmax=1.0)
        axes_row[3].imshow(np.ma.masked_equal(maps.candidates.astype(np.uint8), 0), cmap="autumn", alpha=0.6)
        for axes, title in zip(axes_row, titles):
            axes.contour(maps.mask, levels=[0.5], colors="deepskyblue", linewidths=0.6)
            if maps.reference is not None and maps.reference.any():
                axes.contour(maps.reference, levels=[0.5], colors="lime", linewidths=0.9)
            if row_index == 0:
                axes.set_title(title, fontsize=9)
            axes.set_xticks([])
            axes.set_yticks([])
        axes_row[0].set_ylabel(f"{maps.scan_id}\n{LOBE_TITLES[maps.lobe]}\naxial slice {maps.slice_index_z}", fontsize=9)
    colour_bar = figure.colorbar(dense, ax=list(axes_grid.flat), fraction=0.02, pad=0.02)
    colour_bar.set_label("lesion probability")
    figure.suptitle(
        f"{method}: lesion maps of lobe chunks before and after the attention module "
        "(blue: lobe, green: reference lesion, red: candidates)",
        fontsize=10,
    )
    add_note(figure, note)
    save_png(figure, path, dpi)


def write_attention(model_path, stores: Mapping[str, str], settings: Mapping, note: str | None, out_path, dpi: int) -> list[ChunkMaps]:
    """Load the model, run the chosen chunk of each scan's store and write the figure.

    stores: scan_id -> chunks.h5 path; settings: the chunks, resample and
    model sections load_model checks the checkpoint against.
    """
    model, metadata = load_model(str(model_path), dict(settings), torch.device("cpu"))
    if not metadata["components"]["attention"]:
        raise input_error(
            None, model_path, f"method {metadata['method']!r} was trained without the attention module",
            "Set report.attention_method to a method with attention: true",
        )
    rows = [chunk_maps(model, scan_id, read_chunk(scan_id, path)) for scan_id, path in stores.items()]
    plot_attention(rows, metadata["method"], note, out_path, dpi)
    return rows
