"""Coronal views of a test scan: the CT, each method's probability map and the reference contour."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
from matplotlib.lines import Line2D

from dramseg.errors import input_error
from dramseg.readers import read_ct
from dramseg.figures.common import add_note, save_png

# Orientation every volume is brought to before slicing: array x runs to the
# patient's left, y to posterior, z to superior. A coronal slice is then
# array[:, y, :], drawn with the patient's right on the image's left
# (radiological convention) and superior at the top.
DISPLAY_ORIENTATION = "LPS"
SLICE_CHOICES = ("most_lung", "centroid")
# Largest spacing and origin difference (mm) and direction-cosine difference
# accepted between the CT and a volume drawn on it.
GRID_TOLERANCE_MM = 0.01
DIRECTION_TOLERANCE = 1e-4


@dataclass
class CoronalView:
    """One coronal slice of a scan, cropped to the lungs, all arrays [z, x] with z pointing superior."""

    slice_index_y: int
    choice: str  # how slice_index_y was chosen, one of SLICE_CHOICES
    ct_hu: np.ndarray
    lung: np.ndarray
    reference: np.ndarray | None
    probabilities: dict[str, np.ndarray]
    aspect: float  # z spacing / x spacing, for imshow
    extent_mm: tuple[float, float]  # (width along x, height along z) of the crop


def read_volume(scan_id: str, path, what: str) -> sitk.Image:
    """Read an image file; raise PipelineInputError naming the scan and file on failure."""
    if not os.path.isfile(path):
        raise input_error(scan_id, path, f"the {what} file was not found", f"Run the stage that writes the {what}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise input_error(scan_id, path, f"reading the {what} failed ({error})", f"Delete the {what} and rerun its stage") from error


def oriented_array(scan_id: str, path, image: sitk.Image, grid: sitk.Image, what: str) -> np.ndarray:
    """Return the z, y, x array of `image` in DISPLAY_ORIENTATION after checking it lies on `grid`.

    `grid` is the CT as read from its file. Every volume drawn here must be on
    the CT grid: same size, spacing and origin within GRID_TOLERANCE_MM, and
    direction cosines within DIRECTION_TOLERANCE.
    """
    same_grid = (
        image.GetSize() == grid.GetSize()
        and np.allclose(image.GetSpacing(), grid.GetSpacing(), atol=GRID_TOLERANCE_MM, rtol=0.0)
        and np.allclose(image.GetOrigin(), grid.GetOrigin(), atol=GRID_TOLERANCE_MM, rtol=0.0)
        and np.allclose(image.GetDirection(), grid.GetDirection(), atol=DIRECTION_TOLERANCE, rtol=0.0)
    )
    if not same_grid:
        raise input_error(
            scan_id,
            path,
            f"the {what} has size {image.GetSize()}, spacing {image.GetSpacing()} mm, origin {image.GetOrigin()} mm "
            f"and direction {image.GetDirection()}, but the CT has size {grid.GetSize()}, spacing {grid.GetSpacing()} mm, "
            f"origin {grid.GetOrigin()} mm and direction {grid.GetDirection()}",
            f"Give a {what} on the CT grid (the pipeline's stages write them there)",
        )
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, DISPLAY_ORIENTATION))


def choose_coronal_index(lung_zyx: np.ndarray, choice: str) -> int:
    """Return the y index of the coronal slice: the one with the most lung voxels, or the lung centroid.

    lung_zyx: boolean [z, y, x] lung mask. Raises ValueError for an empty mask or an unknown choice.
    """
    if choice not in SLICE_CHOICES:
        raise ValueError(f"report.coronal_slice is {choice!r}, expected one of {list(SLICE_CHOICES)}")
    per_slice = lung_zyx.sum(axis=(0, 2))
    if not per_slice.any():
        raise ValueError("the lobe map is empty, so no coronal slice through the lungs exists")
    if choice == "most_lung":
        return int(np.argmax(per_slice))
    return int(round(float(np.average(np.arange(per_slice.size), weights=per_slice))))


def coronal_view(
    ct_zyx: np.ndarray,
    lobes_zyx: np.ndarray,
    probabilities_zyx: Mapping[str, np.ndarray],
    reference_zyx: np.ndarray | None,
    spacing_xyz_mm: Sequence[float],
    choice: str,
    margin_mm: float,
) -> CoronalView:
    """Cut one coronal slice from volumes in DISPLAY_ORIENTATION and crop it to the lungs plus a margin.

    ct_zyx: HU; lobes_zyx: lobe labels (lung where above 0); probabilities_zyx:
    method -> float map in [0, 1]; reference_zyx: lesion labels or None.
    """
    lung = lobes_zyx > 0
    y = choose_coronal_index(lung, choice)
    spacing_x, _, spacing_z = (float(value) for value in spacing_xyz_mm)
    z_any, x_any = np.nonzero(lung.any(axis=1))
    z_margin = int(np.ceil(margin_mm / spacing_z))
    x_margin = int(np.ceil(margin_mm / spacing_x))
    z_slice = slice(max(z_any.min() - z_margin, 0), min(z_any.max() + z_margin + 1, lung.shape[0]))
    x_slice = slice(max(x_any.min() - x_margin, 0), min(x_any.max() + x_margin + 1, lung.shape[2]))

    def cut(volume):
        return volume[z_slice, y, x_slice]

    height = z_slice.stop - z_slice.start
    width = x_slice.stop - x_slice.start
    return CoronalView(
        slice_index_y=y,
        choice=choice,
        ct_hu=cut(ct_zyx).astype(np.float32),
        lung=cut(lung),
        reference=None if reference_zyx is None else cut(reference_zyx) > 0,
        probabilities={method: cut(volume).astype(np.float32) for method, volume in probabilities_zyx.items()},
        aspect=spacing_z / spacing_x,
        extent_mm=(width * spacing_x, height * spacing_z),
    )


def plot_coronal(
    view: CoronalView,
    scan_id: str,
    window_hu: Sequence[float],
    overlay_min: float,
    note: str | None,
    path: str | os.PathLike,
    dpi: int,
) -> None:
    """Draw the CT column and one column per method with its probability overlay and the reference contour.

    Probabilities below overlay_min are left transparent so the CT stays visible.
    """
    methods = list(view.probabilities)
    columns = len(methods) + 1
    panel_width = 2.6
    panel_height = panel_width * view.extent_mm[1] / max(view.extent_mm[0], 1e-6)
    figure, axes_row = plt.subplots(1, columns, figsize=(panel_width * columns + 1.2, panel_height + 1.3), squeeze=False)
    axes_row = axes_row[0]
    low, high = float(window_hu[0]), float(window_hu[1])
    display = dict(cmap="gray", vmin=low, vmax=high, origin="lower", aspect=view.aspect, interpolation="nearest")

    axes_row[0].imshow(view.ct_hu, **display)
    axes_row[0].contour(view.lung, levels=[0.5], colors="deepskyblue", linewidths=0.6)
    axes_row[0].set_title(f"CT ({low:g} to {high:g} HU)", fontsize=10)
    overlay = None
    for axes, method in zip(axes_row[1:], methods):
        axes.imshow(view.ct_hu, **display)
        probability = np.ma.masked_less(view.probabilities[method], overlay_min)
        overlay = axes.imshow(probability, cmap="turbo", vmin=0.0, vmax=1.0, alpha=0.6, origin="lower",
                              aspect=view.aspect, interpolation="nearest")
        axes.set_title(method, fontsize=10)
    for axes in axes_row:
        if view.reference is not None and view.reference.any():
            axes.contour(view.reference, levels=[0.5], colors="lime", linewidths=0.9)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_xlabel("R ← → L", fontsize=8)

    handles = [Line2D([], [], color="deepskyblue", linewidth=1, label="lung (lobe map)")]
    if view.reference is not None:
        handles.append(Line2D([], [], color="lime", linewidth=1.5, label="reference lesion"))
    figure.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.03), ncol=len(handles), fontsize=9, frameon=False)
    if overlay is not None:
        colour_bar = figure.colorbar(overlay, ax=list(axes_row), fraction=0.02, pad=0.01)
        colour_bar.solids.set_alpha(1.0)
        colour_bar.set_label("lesion probability /\nrescaled activation")
    figure.suptitle(f"Scan {scan_id}: coronal slice y = {view.slice_index_y} ({view.choice.replace('_', ' ')}), superior at top", fontsize=11)
    add_note(figure, note)
    save_png(figure, path, dpi)


def scan_note(record: Mapping) -> str | None:
    """Return the figure note for a demo scan: synthetic lesions, or a real scan without reference."""
    if not record.get("source"):
        return None
    if record.get("reference"):
        return "Demo cohort: real CT anatomy with synthetic lesions (reference contour = synthetic truth)"
    return "Demo cohort: real COVID-19 CT without reference mask (qualitative only)"


def write_coronal(
    record: Mapping,
    lobes_path,
    probability_paths: Mapping[str, str],
    report_settings: Mapping,
    resample_settings: Mapping,
    out_path,
) -> CoronalView:
    """Read a test scan's CT, lobe map, probability maps and reference, and write its coronal figure."""
    scan_id = record["scan_id"]
    ct_image = read_ct(
        record["ct"],
        scan_id,
        record.get("dicom_series"),
        rescale=resample_settings.get("rescale"),
        max_air_percentile_hu=resample_settings["max_air_percentile_hu"],
    )
    oriented_ct = sitk.DICOMOrient(ct_image, DISPLAY_ORIENTATION)
    ct_zyx = sitk.GetArrayFromImage(oriented_ct)
    lobes_zyx = oriented_array(scan_id, lobes_path, read_volume(scan_id, lobes_path, "lobe map"), ct_image, "lobe map")
    probabilities = {}
    for method, path in probability_paths.items():
        image = read_volume(scan_id, path, f"{method} probability map")
        probabilities[method] = oriented_array(scan_id, path, image, ct_image, f"{method} probability map")
    reference_zyx = None
    if record.get("reference"):
        reference_path = record["reference"]
        reference_image = read_volume(scan_id, reference_path, "reference mask")
        reference_zyx = oriented_array(scan_id, reference_path, reference_image, ct_image, "reference mask")

    try:
        view = coronal_view(
            ct_zyx,
            lobes_zyx,
            probabilities,
            reference_zyx,
            oriented_ct.GetSpacing(),
            report_settings["coronal_slice"],
            float(report_settings["crop_margin_mm"]),
        )
    except ValueError as error:
        raise input_error(scan_id, lobes_path, str(error), "Check the lobes stage output of this scan") from error
    plot_coronal(
        view,
        scan_id,
        report_settings["ct_window_hu"],
        float(report_settings["overlay_min_probability"]),
        scan_note(record),
        out_path,
        int(report_settings["dpi"]),
    )
    return view
