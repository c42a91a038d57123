"""Coronal check pictures of demo scans: CT, approximate lobes and synthetic lesion reference."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dramseg import io  # noqa: E402
from dramseg.anatomy import LOBE_NAMES, SUBTYPES  # noqa: E402

LOBE_COLOURS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd"]
SUBTYPE_COLOURS = ["#ffd700", "#e6194b", "#00bfff"]
WINDOW_HU = (-1100, 300)


def coronal_index(lobes_zyx: np.ndarray) -> int:
    """Return the coronal (y) index where the smallest lobe cross-section is largest, so all lobes show."""
    counts = np.stack([(lobes_zyx == label).sum(axis=(0, 2)) for label in range(1, 6)])
    return int(np.argmax(counts.min(axis=0)))


def lesion_coronal_index(lobes_zyx: np.ndarray, reference_zyx: np.ndarray) -> int:
    """Return the coronal (y) index with the most lesion voxels among those where all five lobes show."""
    counts = np.stack([(lobes_zyx == label).sum(axis=(0, 2)) for label in range(1, 6)])
    lesion = (reference_zyx > 0).sum(axis=(0, 2))
    lesion = np.where(counts.min(axis=0) > 0, lesion, -1)
    if lesion.max() <= 0:
        return coronal_index(lobes_zyx)
    return int(np.argmax(lesion))


def _coronal(image: sitk.Image, y: int) -> np.ndarray:
    # Rows z (flipped so that the patient's head is at the top for the usual axial order), columns x.
    return sitk.GetArrayViewFromImage(image)[::-1, y, :]


def _aspect(image: sitk.Image) -> float:
    spacing_x, _, spacing_z = image.GetSpacing()
    return spacing_z / spacing_x


def _overlay(axis, labels_zx: np.ndarray, colours: list[str], aspect: float) -> None:
    cmap = ListedColormap(colours)
    masked = np.ma.masked_equal(labels_zx, 0)
    axis.imshow(masked, cmap=cmap, vmin=0.5, vmax=len(colours) + 0.5, alpha=0.45, aspect=aspect, interpolation="nearest")


def _lobe_legend(axis) -> None:
    handles = [Patch(color=colour, label=name.upper()) for name, colour in zip(LOBE_NAMES, LOBE_COLOURS)]
    axis.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=True, bbox_to_anchor=(0.5, -0.16))


def save_coronal_check(ct: sitk.Image, lobes: sitk.Image, path: Path, title: str) -> None:
    """Draw one coronal slice of the CT with the approximate lobes over it, as PNG."""
    y = coronal_index(sitk.GetArrayViewFromImage(lobes))
    aspect = _aspect(ct)
    figure, axes = plt.subplots(1, 2, figsize=(9, 5))
    for axis in axes:
        axis.imshow(_coronal(ct, y), cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect)
        axis.set_axis_off()
    _overlay(axes[1], _coronal(lobes, y), LOBE_COLOURS, aspect)
    _lobe_legend(axes[1])
    axes[0].set_title("CT (patient right on the left)", fontsize=9)
    axes[1].set_title("approximate lobes", fontsize=9)
    figure.suptitle(f"{title}, coronal slice y = {y}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80, format="png", bbox_inches="tight")
    plt.close(figure)


def save_variant_pictures(ct: sitk.Image, lobes: sitk.Image, reference: sitk.Image, out_dir: Path) -> list[Path]:
    """Write demo-ct.png, demo-lobes.png and demo-lesions.png: one coronal slice of a variant each."""
    out_dir = Path(out_dir)
    y = lesion_coronal_index(sitk.GetArrayViewFromImage(lobes), sitk.GetArrayViewFromImage(reference))
    aspect = _aspect(ct)
    ct_zx = _coronal(ct, y)
    written = []
    panels = [
        ("demo-ct.png", "CT of a synthetic variant (coronal)", None, None),
        ("demo-lobes.png", "approximate lobes (not a lobe segmentation)", _coronal(lobes, y), "lobes"),
        ("demo-lesions.png", "synthetic lesion reference", _coronal(reference, y), "lesions"),
    ]
    for filename, title, labels_zx, kind in panels:
        figure, axis = plt.subplots(figsize=(5.5, 5))
        axis.imshow(ct_zx, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect)
        axis.set_axis_off()
        if kind == "lobes":
            _overlay(axis, labels_zx, LOBE_COLOURS, aspect)
            _lobe_legend(axis)
        elif kind == "lesions":
            _overlay(axis, labels_zx, SUBTYPE_COLOURS, aspect)
            handles = [Patch(color=colour, label=SUBTYPES[label]) for label, colour in zip(sorted(SUBTYPES), SUBTYPE_COLOURS)]
            axis.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, bbox_to_anchor=(0.5, -0.12))
        axis.set_title(f"{title}\npatient right on the left", fontsize=9)
        figure.tight_layout()
        path = out_dir / filename
        with io.atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=80, format="png", bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written
