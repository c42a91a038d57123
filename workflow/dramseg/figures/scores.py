"""Per-method DSC distributions, DSC against lesion subtype shares, and lobe-score confusion matrices."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import SimpleITK as sitk

from dramseg import io, metrics
from dramseg.anatomy import SUBTYPES
from dramseg.errors import input_error
from dramseg.evaluate import lobe_score_pairs
from dramseg.figures.common import add_note, empty_figure, method_colours, save_png


def read_results(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Read per-scan evaluation JSON files (results/evaluate/{method}/{scan}.json)."""
    results = []
    for path in paths:
        result = io.read_json(path)
        missing = {"method", "scan_id", "dsc"} - set(result)
        if missing:
            raise input_error(result.get("scan_id"), path, f"the result lacks the keys {sorted(missing)}", "Rerun the evaluate stage")
        results.append(result)
    return results


def dsc_frame(results: Sequence[Mapping]) -> pd.DataFrame:
    """Return method, scan_id and dsc_pct (NaN where the scan has no reference mask)."""
    rows = [
        {"method": result["method"], "scan_id": result["scan_id"],
         "dsc_pct": np.nan if result["dsc"] is None else 100.0 * float(result["dsc"])}
        for result in results
    ]
    return pd.DataFrame(rows, columns=["method", "scan_id", "dsc_pct"])


def plot_dsc(frame: pd.DataFrame, methods: Sequence[str], note: str | None, path, dpi: int) -> None:
    """Draw a box plot of DSC per method with each scan as a point; scans without a reference are left out."""
    defined = frame.dropna(subset=["dsc_pct"])
    if defined.empty:
        figure = empty_figure("DSC per method", "No test scan has a reference mask, so no DSC is defined.")
        save_png(figure, path, dpi)
        return
    figure, axes = plt.subplots(figsize=(max(6.0, 1.0 * len(methods) + 2.0), 4.5))
    colours = method_colours(methods)
    values = [defined.loc[defined["method"] == method, "dsc_pct"].to_numpy() for method in methods]
    positions = np.arange(1, len(methods) + 1)
    boxes = axes.boxplot(values, positions=positions, widths=0.55, showfliers=False, patch_artist=True,
                         medianprops={"color": "black", "linewidth": 1.5})
    generator = np.random.default_rng(0)  # jitter only, so the figure is the same on every run
    for position, method, method_values, box in zip(positions, methods, values, boxes["boxes"]):
        box.set_facecolor((*colours[method][:3], 0.35))
        jitter = generator.uniform(-0.12, 0.12, size=method_values.size)
        axes.scatter(position + jitter, method_values, s=14, color=colours[method], edgecolor="black", linewidth=0.3, zorder=3)
        if method_values.size:
            axes.text(position, 101.5, f"{np.mean(method_values):.1f}", ha="center", fontsize=8)
    axes.set_xticks(positions, methods, rotation=30, ha="right")
    axes.set_ylim(0, 106)
    axes.set_ylabel("DSC (%)")
    axes.set_xlabel("method")
    scans = defined["scan_id"].nunique()
    axes.set_title(f"DSC per test scan ({scans} scans with reference; mean above each box)")
    axes.grid(axis="y", alpha=0.3)
    add_note(figure, note)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    save_png(figure, path, dpi)


def subtype_shares(scan_id: str, reference_path) -> dict[str, float]:
    """Return the share of each lesion subtype in a reference mask (fractions of lesion voxels; NaN when empty)."""
    try:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path)))
    except RuntimeError as error:
        raise input_error(scan_id, reference_path, f"reading the reference mask failed ({error})", "Check the record's reference path") from error
    lesion_voxels = int(np.count_nonzero(labels > 0))
    if lesion_voxels == 0:
        return {name: float("nan") for name in SUBTYPES.values()}
    return {name: float(np.count_nonzero(labels == label)) / lesion_voxels for label, name in SUBTYPES.items()}


def plot_dsc_subtypes(
    frame: pd.DataFrame, shares: Mapping[str, Mapping[str, float]], methods: Sequence[str], note: str | None, path, dpi: int
) -> None:
    """Scatter DSC against each subtype's share of the reference lesion, one panel per subtype, methods in colour.

    frame: as dsc_frame; shares: scan_id -> subtype name -> fraction.
    """
    defined = frame.dropna(subset=["dsc_pct"])
    defined = defined[defined["scan_id"].isin(list(shares))]
    if defined.empty:
        figure = empty_figure("DSC against lesion subtype share", "No test scan has a reference mask with lesions.")
        save_png(figure, path, dpi)
        return
    colours = method_colours(methods)
    figure, axes_row = plt.subplots(1, len(SUBTYPES), figsize=(4.2 * len(SUBTYPES), 4.2), sharey=True)
    titles = {"ggo": "ground-glass opacity", "consolidation": "consolidation", "mixed": "mixed"}
    for axes, subtype in zip(axes_row, SUBTYPES.values()):
        for method in methods:
            rows = defined[defined["method"] == method]
            x = [100.0 * shares[scan][subtype] for scan in rows["scan_id"]]
            axes.scatter(x, rows["dsc_pct"], s=18, color=colours[method], label=method, alpha=0.85, edgecolor="none")
        axes.set_title(titles[subtype])
        axes.set_xlabel(f"{titles[subtype]} share of the reference lesion (%)")
        axes.set_xlim(-3, 103)
        axes.set_ylim(0, 100)
        axes.grid(alpha=0.3)
    axes_row[0].set_ylabel("DSC (%)")
    handles, labels = axes_row[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title="method", frameon=False)
    figure.suptitle("DSC against the share of each lesion subtype (test scans with reference)")
    add_note(figure, note)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    save_png(figure, path, dpi)


def confusion_counts(results: Sequence[Mapping], top_score: int) -> np.ndarray:
    """Count lobes per (reference score, predicted score); returns int64 [top_score + 1, top_score + 1], rows = reference."""
    counts = np.zeros((top_score + 1, top_score + 1), dtype=np.int64)
    for result in results:
        reference, predicted = lobe_score_pairs(result)
        for reference_score, predicted_score in zip(reference, predicted):
            if not (0 <= reference_score <= top_score and 0 <= predicted_score <= top_score):
                raise input_error(
                    result["scan_id"],
                    None,
                    f"method {result['method']!r} has lobe scores {reference_score} (reference) and "
                    f"{predicted_score} (predicted), expected 0 to {top_score}",
                    "Check chunks.score_intervals and rerun the evaluate stage",
                )
            counts[reference_score, predicted_score] += 1
    return counts


def plot_confusion(counts: np.ndarray, method: str, note: str | None, path, dpi: int) -> None:
    """Draw the confusion matrix of lobe severity scores with a count in every cell, accuracy and kappa in the title."""
    scores = np.arange(counts.shape[0])
    reference = np.repeat(scores, counts.sum(axis=1))
    predicted = np.concatenate([np.repeat(scores, row) for row in counts]) if counts.sum() else np.array([], dtype=int)
    total = int(counts.sum())
    figure, axes = plt.subplots(figsize=(5.6, 5.0))
    image = axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    threshold = counts.max() / 2.0
    for row in scores:
        for column in scores:
            axes.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=10,
                      color="white" if counts[row, column] > threshold else "black")
    axes.set_xticks(scores, [str(score) for score in scores])
    axes.set_yticks(scores, [str(score) for score in scores])
    axes.set_xlabel("predicted lobe severity score")
    axes.set_ylabel("reference lobe severity score")
    if total:
        accuracy = 100.0 * metrics.severity_accuracy(reference.tolist(), predicted.tolist())
        kappa = metrics.linear_weighted_kappa(reference.tolist(), predicted.tolist(), categories=scores.tolist())
        axes.set_title(f"{method}: {total} lobes, accuracy {accuracy:.1f} %, weighted kappa {kappa:.2f}", fontsize=10)
    else:
        axes.set_title(f"{method}: no lobe has both a reference and a predicted score", fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04).set_label("lobes")
    add_note(figure, note)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    save_png(figure, path, dpi)
