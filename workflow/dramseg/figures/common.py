"""Shared figure helpers: the Agg backend, atomic PNG writing and the demo-cohort note."""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from dramseg import io  # noqa: E402

DEMO_NOTE = "Demo cohort: real CT anatomy with synthetic lesions and scores, not a clinical result"
# Colours of methods and splits, reused across figures so a method keeps its colour.
PALETTE = plt.get_cmap("tab10").colors


def save_png(figure, path: str | os.PathLike, dpi: int) -> None:
    """Write a figure as PNG atomically and close it."""
    with io.atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(figure)


def is_demo(records: Iterable[Mapping]) -> bool:
    """Return True when any record comes from the demo cohort (its `source` is set)."""
    return any(record.get("source") for record in records)


def add_note(figure, text: str | None) -> None:
    """Write a one-line note (for example DEMO_NOTE) under the figure's title, in italics."""
    if text:
        figure.text(0.5, 0.005, text, ha="center", va="bottom", fontsize=9, style="italic", color="dimgray")


def method_colours(methods: Iterable[str]) -> dict[str, tuple]:
    """Return a colour per method in the given order."""
    return {method: PALETTE[index % len(PALETTE)] for index, method in enumerate(methods)}


def empty_figure(title: str, message: str, size_inches=(6.0, 3.0)):
    """Return a figure that only states why there is nothing to plot."""
    figure, axes = plt.subplots(figsize=size_inches)
    axes.axis("off")
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    return figure
