"""Training and validation loss per epoch of every trained method."""

from __future__ import annotations

import math
import os
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FormatStrFormatter, FuncFormatter, MaxNLocator

from dramseg.errors import input_error
from dramseg.figures.common import add_note, empty_figure, save_png

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss")


def read_history(method: str, path: str | os.PathLike) -> pd.DataFrame:
    """Read a method's history.csv and check it has the epoch, train_loss and val_loss columns."""
    try:
        history = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise input_error(None, path, f"reading the training history of method {method!r} failed ({error})", "Rerun train_method") from error
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise input_error(None, path, f"the history of method {method!r} lacks the columns {missing}", "Rerun train_method")
    return history


def _label_two_and_five(value: float, _position) -> str:
    # Minor log ticks are labelled only at 2 and 5 times a power of ten, so they do not overlap.
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if leading in (2, 5) else ""


def plot_training(histories: Mapping[str, pd.DataFrame], log_scale: bool, note: str | None, path, dpi: int) -> None:
    """Draw one panel per method with its training and validation loss per epoch.

    Methods have their own panels because the classification, regression and
    supervised losses have different scales. The validation loss at the
    selected epoch (the lowest) is marked.
    """
    if not histories:
        save_png(empty_figure("Training curves", "No method was trained (apply mode or no methods)."), path, dpi)
        return
    columns = min(len(histories), 5)
    rows = math.ceil(len(histories) / columns)
    figure, axes_grid = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.8 * rows + 0.6), squeeze=False)
    for axes, (method, history) in zip(axes_grid.flat, histories.items()):
        axes.plot(history["epoch"], history["train_loss"], marker="o", markersize=3, label="train")
        axes.plot(history["epoch"], history["val_loss"], marker="s", markersize=3, label="validation")
        title = method
        if history["val_loss"].notna().any():
            best = history.loc[history["val_loss"].idxmin()]
            axes.scatter([best["epoch"]], [best["val_loss"]], s=60, facecolor="none", edgecolor="red", zorder=3,
                         label="selected epoch (lowest validation loss)")
            title = f"{method} (selected epoch {int(best['epoch'])})"

        positive = np.concatenate([history["train_loss"].to_numpy(), history["val_loss"].to_numpy()])
        if log_scale and np.all(positive[np.isfinite(positive)] > 0):
            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            axes.yaxis.set_minor_formatter(FuncFormatter(_label_two_and_five))
            axes.tick_params(axis="y", which="minor", labelsize=7)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("epoch")
        axes.set_ylabel("loss")
        axes.grid(alpha=0.3)
    for axes in list(axes_grid.flat)[len(histories):]:
        axes.axis("off")
    figure.suptitle("Training and validation loss per epoch")
    handles, labels = axes_grid.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.96), ncol=len(labels), frameon=False)
    add_note(figure, note)
    figure.tight_layout(rect=(0, 0.04, 1, 0.93))
    save_png(figure, path, dpi)
