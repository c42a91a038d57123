"""Classical lung segmentation of a chest CT: air inside the body, airways removed, lungs split.

Steps: threshold air and drop the air that touches the border of each axial
slice, because that air is outside the patient. Keep the large 3D air
components. Remove the trachea and main bronchi by following them down from the
top slices. Split the left and right lung by eroding until two cores remain.
Fill the vessels inside each lung slice by slice.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

LOGGER = logging.getLogger(__name__)

RIGHT_LUNG = 1
LEFT_LUNG = 2

AIR_THRESHOLD_HU = -400.0
# Air components smaller than this fraction of the largest one are not lung.
MIN_COMPONENT_FRACTION = 0.2
# An axial airway cross-section larger than this has merged with a lung.
MAX_AIRWAY_AREA_MM2 = 600.0
# The trachea's centroid lies within this distance of the body's midline.
MAX_TRACHEA_OFFSET_MM = 30.0
# Slices in which an airway is followed into a lung it merged with.
MAX_MERGED_SLICES = 6
# Erosion depths tried, in order, to split the lungs where they touch.
SPLIT_DEPTHS_MM = (0.0, 4.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0)
# The smaller of the two lung cores must hold this fraction of the larger one.
MIN_CORE_RATIO = 0.15

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def segment_lungs(ct: sitk.Image) -> np.ndarray:
    """Segment the lungs of a chest CT.

    Args:
        ct: CT in HU with any direction; the grid should be near 1-3 mm.

    Returns:
        uint8 array (z, y, x) on the CT grid: 0 background, 1 right lung, 2 left lung.

    Raises:
        ValueError: when no air inside the body or only one lung is found.
    """
    ct_zyx = sitk.GetArrayViewFromImage(ct)
    spacing_zyx_mm = np.array(ct.GetSpacing()[::-1], dtype=float)

    air_zyx = separate_thin_bridges(inside_air(ct_zyx))
    if not air_zyx.any():
        raise ValueError("no air found inside the body below -400 HU; is the image a chest CT in HU?")

    airways_zyx = find_airways(air_zyx, ct_zyx, spacing_zyx_mm)
    LOGGER.info("airways: %d voxels removed", int(airways_zyx.sum()))
    lungs_air_zyx = keep_large_components(air_zyx & ~airways_zyx)

    labels_zyx = split_lungs(lungs_air_zyx, spacing_zyx_mm)
    labels_zyx = assign_sides(labels_zyx, ct)
    return fill_vessels(labels_zyx)


def inside_air(ct_zyx: np.ndarray) -> np.ndarray:
    """Return air (< -400 HU) that does not touch the border of its axial slice (bool, z y x)."""
    air_zyx = ct_zyx < AIR_THRESHOLD_HU
    # Labelling with an in-plane structure labels each axial slice on its own.
    components_zyx, _ = ndimage.label(air_zyx, structure=_IN_PLANE)
    border = np.concatenate(
        [
            components_zyx[:, 0, :].ravel(),
            components_zyx[:, -1, :].ravel(),
            components_zyx[:, :, 0].ravel(),
            components_zyx[:, :, -1].ravel(),
        ]
    )
    outside = np.unique(border[border > 0])
    return air_zyx & ~np.isin(components_zyx, outside)


def separate_thin_bridges(air_zyx: np.ndarray) -> np.ndarray:
    """Keep the large air components after cutting bridges one voxel thin.

    Partial volume can make a thin diaphragm look like air, joining a lung to
    gas in the stomach or colon. An opening by one voxel cuts such bridges, the
    large components of the opened mask are kept, and the air within one voxel
    of them is added back so that thin lung edges stay.
    """
    opened_zyx = ndimage.binary_opening(air_zyx)
    kept_zyx = keep_large_components(opened_zyx)
    return keep_large_components(air_zyx & ndimage.binary_dilation(kept_zyx))


def keep_large_components(mask_zyx: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION) -> np.ndarray:
    """Keep the 3D components at least `min_fraction` times the largest one's size."""
    components_zyx, count = ndimage.label(mask_zyx)
    if count == 0:
        return mask_zyx.copy()
    sizes = np.bincount(components_zyx.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max())
    return np.isin(components_zyx, keep)


def find_airways(air_zyx: np.ndarray, ct_zyx: np.ndarray, spacing_zyx_mm: np.ndarray) -> np.ndarray:
    """Follow the trachea and main bronchi down from the top slices (bool, z y x).

    The trachea is the small air cross-section near the body's midline in the
    highest slices. Going down, an airway cross-section is a small component
    that overlaps the airway of the slice above. A component larger than
    MAX_AIRWAY_AREA_MM2 is a lung: the airway continues into it only next to
    the airway above, for at most MAX_MERGED_SLICES slices in total, and then
    stops. The slice axis must run along the patient's long axis.
    """
    pixel_area_mm2 = float(spacing_zyx_mm[1] * spacing_zyx_mm[2])
    max_pixels = MAX_AIRWAY_AREA_MM2 / pixel_area_mm2
    airways_zyx = np.zeros_like(air_zyx)
    slices = np.flatnonzero(air_zyx.any(axis=(1, 2)))
    if slices.size == 0:
        return airways_zyx

    # The top of the image is the highest physical z for the usual axial order.
    order = slices[::-1]
    previous = None
    merged_slices = 0
    grow = ndimage.generate_binary_structure(2, 2)
    for z in order:
        components, count = ndimage.label(air_zyx[z])
        if count == 0:
            if previous is not None:
                break
            continue
        sizes = np.bincount(components.ravel())
        if previous is None:
            midline_x = _body_midline_x(ct_zyx[z])
            centres = ndimage.center_of_mass(np.ones_like(components), components, range(1, count + 1))
            chosen = [
                label
                for label, (_, x) in zip(range(1, count + 1), centres)
                if sizes[label] <= max_pixels and abs(x - midline_x) * spacing_zyx_mm[2] <= MAX_TRACHEA_OFFSET_MM
            ]
            if not chosen:
                # NOTE: the first slices can hold only lung apices; the search continues below them.
                continue
            current = np.isin(components, chosen)
        else:
            near = ndimage.binary_dilation(previous, grow, iterations=2)
            touched = [label for label in np.unique(components[near]) if label > 0]
            chosen = [label for label in touched if sizes[label] <= max_pixels]
            current = np.isin(components, chosen)
            # A thin wall lost to partial volume can merge the airway with a lung in one slice.
            # There the airway goes on as the part of the merged component next to it, for a few slices only.
            merged = [label for label in touched if sizes[label] > max_pixels]
            continued = np.isin(components, merged) & ndimage.binary_dilation(previous, grow)
            if continued.any() and merged_slices < MAX_MERGED_SLICES:
                current |= continued
                merged_slices += 1
            if not current.any():
                break
        airways_zyx[z] = current
        previous = current
    return airways_zyx


def _body_midline_x(slice_yx: np.ndarray) -> float:
    body = slice_yx > AIR_THRESHOLD_HU
    columns = np.flatnonzero(body.any(axis=0))
    if columns.size == 0:
        return slice_yx.shape[1] / 2.0
    return (columns[0] + columns[-1]) / 2.0


def split_lungs(lungs_air_zyx: np.ndarray, spacing_zyx_mm: np.ndarray) -> np.ndarray:
    """Split lung air into two components, labelled 1 and 2 in no particular side order.

    The mask is eroded (distance transform in mm) with increasing depth until
    its two largest cores have comparable size. Every lung voxel then takes the
    label of its nearest core.

    Raises:
        ValueError: when no erosion depth gives two cores.
    """
    distance_zyx = ndimage.distance_transform_edt(lungs_air_zyx, sampling=spacing_zyx_mm).astype(np.float32)
    for depth_mm in SPLIT_DEPTHS_MM:
        core_zyx = distance_zyx > depth_mm
        components_zyx, count = ndimage.label(core_zyx)
        if count < 2:
            continue
        sizes = np.bincount(components_zyx.ravel())
        sizes[0] = 0
        first, second = np.argsort(sizes)[::-1][:2]
        if sizes[second] < MIN_CORE_RATIO * sizes[first]:
            continue
        LOGGER.info("lungs split at erosion depth %.0f mm", depth_mm)
        cores_zyx = np.zeros(lungs_air_zyx.shape, dtype=np.uint8)
        cores_zyx[components_zyx == first] = 1
        cores_zyx[components_zyx == second] = 2
        if depth_mm == 0.0:
            return cores_zyx
        _, nearest = ndimage.distance_transform_edt(cores_zyx == 0, sampling=spacing_zyx_mm, return_indices=True)
        nearest_label_zyx = cores_zyx[tuple(nearest)]
        return np.where(lungs_air_zyx, nearest_label_zyx, 0).astype(np.uint8)
    raise ValueError(
        f"could not split the lungs into two parts with erosion depths up to {SPLIT_DEPTHS_MM[-1]} mm; "
        "the scan may show only one lung"
    )


def assign_sides(labels_zyx: np.ndarray, ct: sitk.Image) -> np.ndarray:
    """Relabel two lung parts so that 1 is the right and 2 the left lung.

    In LPS physical coordinates patient-left is larger x, so the part whose
    centroid has the larger physical x is the left lung.
    """
    physical_x = []
    for label in (1, 2):
        z, y, x = ndimage.center_of_mass(labels_zyx == label)
        physical_x.append(ct.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))[0])
    sided_zyx = np.zeros_like(labels_zyx)
    left = 1 if physical_x[0] > physical_x[1] else 2
    sided_zyx[labels_zyx == left] = LEFT_LUNG
    sided_zyx[(labels_zyx > 0) & (labels_zyx != left)] = RIGHT_LUNG
    return sided_zyx


def fill_vessels(labels_zyx: np.ndarray) -> np.ndarray:
    """Fill holes (vessels, nodules) of each lung in every axial slice and smooth its edge."""
    filled_zyx = np.zeros_like(labels_zyx)
    for label in (RIGHT_LUNG, LEFT_LUNG):
        lung_zyx = ndimage.binary_closing(labels_zyx == label, structure=_IN_PLANE, iterations=2)
        lung_zyx = ndimage.binary_fill_holes(lung_zyx, structure=_IN_PLANE)
        filled_zyx[lung_zyx & (filled_zyx == 0)] = label
    return filled_zyx
