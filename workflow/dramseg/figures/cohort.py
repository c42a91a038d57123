"""The cohort table (Xie et al.'s Table I: scans, CO-RADS and lobe scores per split) and its bar chart."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from dramseg import io
from dramseg.anatomy import LOBE_NAMES
from dramseg.errors import input_error
from dramseg.figures.common import DEMO_NOTE, PALETTE, add_note, is_demo, save_png

SPLITS = ("train", "val", "test")
CORADS_VALUES = tuple(range(1, 7))


def read_records(paths: Sequence[str | os.PathLike], top_score: int) -> list[dict]:
    """Read record.json files and check the fields the cohort table counts.

    Raises PipelineInputError naming the scan and file for an unknown split, a
    CO-RADS outside 1-6, or a lobe score outside 0..top_score.
    """
    records = []
    for path in paths:
        record = io.read_json(path)
        scan_id = record.get("scan_id")
        if record.get("split") not in SPLITS:
            raise input_error(
                scan_id, path, f"split is {record.get('split')!r}, expected one of {list(SPLITS)}", "Rerun the scans stage"
            )
        corads = record.get("corads")
        if corads is not None and corads not in CORADS_VALUES:
            raise input_error(scan_id, path, f"corads is {corads!r}, expected an integer from 1 to 6 or null", "Fix the cohort table")
        for lobe, score in (record.get("scores") or {}).items():
            if lobe not in LOBE_NAMES:
                raise input_error(scan_id, path, f"unknown lobe {lobe!r} in scores, expected {list(LOBE_NAMES)}", "Fix the cohort table")
            if score is not None and score not in range(top_score + 1):
                raise input_error(
                    scan_id, path, f"the score of lobe {lobe!r} is {score!r}, expected an integer from 0 to {top_score}", "Fix the cohort table"
                )
        records.append(record)
    return records


def cohort_table(records: Sequence[Mapping], top_score: int) -> pd.DataFrame:
    """Count scans, CO-RADS categories and lobe severity scores per split.

    Returns one row per split (train, val, test) and a last row `all`, with
    the columns scans, corads_1..corads_6, corads_unknown (scans), and
    score_0..score_<top_score>, score_unknown (lobes; a scan without scores
    counts five unknown lobes).
    """
    rows = []
    for split in (*SPLITS, "all"):
        members = [record for record in records if split == "all" or record["split"] == split]
        row = {"split": split, "scans": len(members)}
        corads = [record.get("corads") for record in members]
        for value in CORADS_VALUES:
            row[f"corads_{value}"] = sum(1 for item in corads if item == value)
        row["corads_unknown"] = sum(1 for item in corads if item is None)

        scores = []
        for record in members:
            lobe_scores = record.get("scores") or {}
            scores.extend(lobe_scores.get(lobe) for lobe in LOBE_NAMES)
        for value in range(top_score + 1):
            row[f"score_{value}"] = sum(1 for item in scores if item == value)
        row["score_unknown"] = sum(1 for item in scores if item is None)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_cohort(table: pd.DataFrame, demo: bool, path: str | os.PathLike, dpi: int) -> None:
    """Draw grouped bars per split: scans per CO-RADS category and lobes per severity score."""
    splits = [split for split in SPLITS if int(table.loc[table["split"] == split, "scans"].iloc[0]) > 0]

    figure, (corads_axes, score_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = (
        (corads_axes, "corads", [str(value) for value in CORADS_VALUES] + ["unknown"], "CO-RADS category", "scans"),
        (score_axes, "score", [column.split("_")[1] for column in table.columns if column.startswith("score_")],
         "lobe severity score", "lobes"),
    )

    for axes, prefix, categories, xlabel, ylabel in panels:
        positions = np.arange(len(categories))
        width = 0.8 / max(len(splits), 1)
        for index, split in enumerate(splits):
            row = table.loc[table["split"] == split].iloc[0]
            counts = [int(row[f"{prefix}_{category}"]) for category in categories]
            bars = axes.bar(positions + (index - (len(splits) - 1) / 2) * width, counts, width,
                            label=f"{split} (n = {int(row['scans'])})", color=PALETTE[index])
            axes.bar_label(bars, labels=[str(count) if count else "" for count in counts], fontsize=8)
        axes.set_xticks(positions, categories)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(f"number of {ylabel}")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.margins(y=0.12)

    corads_axes.set_title("CO-RADS per split")
    score_axes.set_title("Lobe severity scores per split")
    figure.suptitle("Cohort (as Table I of Xie et al.)")
    handles, labels = corads_axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.95), ncol=len(labels), frameon=False)
    add_note(figure, DEMO_NOTE if demo else None)
    figure.tight_layout(rect=(0, 0.04, 1, 0.92))
    save_png(figure, path, dpi)


def write_cohort(record_paths: Sequence, out_table, out_figure, top_score: int, dpi: int) -> pd.DataFrame:
    """Read the records, write the cohort CSV and its bar chart; return the table."""
    records = read_records(record_paths, top_score)
    table = cohort_table(records, top_score)
    io.write_csv(table, out_table)
    plot_cohort(table, is_demo(records), out_figure, dpi)
    return table
