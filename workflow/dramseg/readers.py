"""Readers for CT scans and label maps: NIfTI, MetaImage, NRRD, DICOM series and single DICOM files.

Every problem with an input file raises errors.PipelineInputError naming the
scan, the file and what to do. DICOM series are checked for missing slices,
uneven slice spacing and gantry tilt, because ITK would otherwise build a
wrong geometry without complaint.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dramseg.errors import input_error

log = logging.getLogger(__name__)

# Lowest value a CT voxel keeps: air. Scanners pad the area outside the
# reconstruction circle with lower values (-2048, -3024), which are clipped to this.
AIR_HU = -1024.0
MIN_CT_SLICES = 3

# Tolerances for slice positions in a DICOM series, in mm and as fractions.
# A step between two slices may differ from the median step by this much.
SLICE_STEP_TOLERANCE_MM = 0.01
SLICE_STEP_TOLERANCE_RELATIVE = 0.01
# Largest in-plane shift per slice step, as a fraction of the step (about 0.3 degrees),
# above which the series counts as acquired with gantry tilt.
TILT_TOLERANCE_RELATIVE = 0.005

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_SERIES_DESCRIPTION_TAG = "0008|103e"
_POSITION_TAG = "0020|0032"
_ORIENTATION_TAG = "0020|0037"


def read_image(path: str | os.PathLike, scan_id: str, series_uid: str | None = None) -> sitk.Image:
    """Read an image file (NIfTI, MHA/MHD, NRRD, DICOM) or a DICOM series folder.

    Args:
        path: image file, single (possibly multi-frame) DICOM file, or folder
            of one DICOM series. Non-DICOM files inside a folder are ignored.
        scan_id: scan id used in error messages.
        series_uid: SeriesInstanceUID to read when the folder contains several series.

    Returns:
        The image with the pixel type and geometry stored in the file.

    Raises:
        PipelineInputError: the path is missing, unreadable, empty, truncated,
            not an image, or a DICOM folder with several series, missing slices,
            uneven spacing or gantry tilt.
    """
    path = Path(path)
    if not path.exists():
        raise input_error(
            scan_id, path, "the file or folder does not exist", "Check the path in the cohort table (relative paths start at the project folder)"
        )
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise input_error(scan_id, path, "permission denied when reading", "Make it readable for the user running the pipeline (chmod)")
    if path.is_dir():
        return _read_dicom_folder(path, scan_id, series_uid)
    if path.stat().st_size == 0:
        raise input_error(scan_id, path, "the file is empty (0 bytes)", "Copy or export the file again")
    if _is_dicom_file(path):
        return _read_single_dicom(path, scan_id)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path, scan_id)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise input_error(
            scan_id,
            path,
            f"reading the image failed ({_last_line(error)})",
            "Check that the file is a complete NIfTI, MHA/MHD, NRRD or DICOM file; export or copy it again",
        ) from error


def read_ct(
    path: str | os.PathLike,
    scan_id: str,
    series_uid: str | None = None,
    rescale: dict | None = None,
    max_air_percentile_hu: float = -850.0,
) -> sitk.Image:
    """Read a CT scan as a float32 image in Hounsfield units and check that it is one.

    Values below -1024 HU (padding outside the field of view, such as -2048 or
    -3024) are clipped to -1024 HU (air) and the number of clipped voxels is logged.

    Args:
        path, scan_id, series_uid: as for read_image.
        rescale: optional {"slope": a, "intercept": b}; the stored values v are
            converted as HU = a * v + b before the checks. For data stored
            without rescale tags (for example 0..4095).
        max_air_percentile_hu: the 1st percentile of the intensities must be at
            most this value, because every chest CT contains air.

    Returns:
        float32 image, same geometry as the file, values in HU, at least -1024.

    Raises:
        PipelineInputError: not a 3D single-channel image, fewer than 3 slices,
            NaN or infinite voxels, constant intensities, or intensities that do
            not look like HU.
    """
    image = read_image(path, scan_id, series_uid)
    _check_scalar_3d(image, scan_id, path, "CT scan")
    if image.GetSize()[2] < MIN_CT_SLICES:
        raise input_error(
            scan_id,
            path,
            f"the CT has {image.GetSize()[2]} slice(s) (size x, y, z = {image.GetSize()}), at least {MIN_CT_SLICES} are needed",
            "Give the whole scan: for DICOM, the folder of the series rather than one slice file",
        )

    ct_zyx = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    nonfinite = int(np.count_nonzero(~np.isfinite(ct_zyx)))
    if nonfinite:
        raise input_error(
            scan_id, path, f"the CT has {nonfinite} NaN or infinite voxels", "Repair or re-export the scan; the pipeline does not fill in missing values"
        )
    if ct_zyx.min() == ct_zyx.max():
        raise input_error(
            scan_id, path, f"every voxel of the CT has the same value ({ct_zyx.min():g})", "The file holds no image data; export the scan again"
        )

    if rescale is not None:
        slope, intercept = _rescale_coefficients(rescale)
        log.info("scan %s: applying HU = %g * value + %g (resample.rescale)", scan_id, slope, intercept)
        ct_zyx = (ct_zyx * np.float32(slope) + np.float32(intercept)).astype(np.float32, copy=False)

    air_percentile_hu = float(np.percentile(ct_zyx, 1.0))
    if air_percentile_hu > max_air_percentile_hu:
        fix = (
            "The data look unscaled (stored values without the rescale intercept). "
            "Set `resample.rescale: {slope: 1, intercept: -1024}` (or the scanner's slope and intercept) to convert them to HU"
        )
        if rescale is not None:
            fix = f"The rescale {rescale} was applied already; check its slope and intercept against the DICOM tags (0028,1052) and (0028,1053)"
        raise input_error(
            scan_id,
            path,
            f"the intensities do not look like Hounsfield units: the 1st percentile is {air_percentile_hu:g}, "
            f"expected at most {max_air_percentile_hu:g} (air is about -1000 HU)",
            fix,
        )

    padding = ct_zyx < AIR_HU
    padding_count = int(np.count_nonzero(padding))
    if padding_count:
        log.info(
            "scan %s: clipped %d voxels below %g HU (minimum %g, scanner padding) to %g HU",
            scan_id,
            padding_count,
            AIR_HU,
            float(ct_zyx.min()),
            AIR_HU,
        )
        ct_zyx[padding] = AIR_HU

    ct = sitk.GetImageFromArray(ct_zyx)
    ct.CopyInformation(image)
    return ct


def read_label_map(path: str | os.PathLike, scan_id: str) -> sitk.Image:
    """Read a label map and return it with an integer pixel type.

    A float map whose values are all whole numbers is converted to integers
    with a warning (some tools save label maps as float).

    Raises:
        PipelineInputError: not 3D single-channel, non-integer or non-finite
            float values, or negative labels.
    """
    image = read_image(path, scan_id)
    _check_scalar_3d(image, scan_id, path, "label map")
    labels_zyx = sitk.GetArrayViewFromImage(image)

    if np.issubdtype(labels_zyx.dtype, np.floating):
        finite = np.isfinite(labels_zyx)
        fractional = ~finite | (np.floor(labels_zyx) != labels_zyx)
        fractional_count = int(np.count_nonzero(fractional))
        if fractional_count:
            examples = np.unique(labels_zyx[fractional])[:5].tolist()
            raise input_error(
                scan_id,
                path,
                f"the label map has {fractional_count} voxels with non-integer values (for example {examples})",
                "Give a label map with whole-number labels; it may have been resampled with linear interpolation instead of nearest neighbour",
            )
        log.warning("scan %s: label map %s is stored as %s; converting to integers", scan_id, path, image.GetPixelIDTypeAsString())
        integer = sitk.GetImageFromArray(labels_zyx.astype(np.int32))
        integer.CopyInformation(image)
        image = integer
        labels_zyx = sitk.GetArrayViewFromImage(image)

    if labels_zyx.size and labels_zyx.min() < 0:
        raise input_error(
            scan_id,
            path,
            f"the label map has negative labels (minimum {int(labels_zyx.min())})",
            "Lobe labels are positive integers and 0 is background; check the file",
        )
    return image


def _check_scalar_3d(image: sitk.Image, scan_id: str, path, what: str) -> None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise input_error(
            scan_id,
            path,
            f"the {what} has {image.GetNumberOfComponentsPerPixel()} components per voxel (for example RGB), expected 1",
            "Give a grey-value image with one value per voxel",
        )
    if image.GetDimension() != 3:
        raise input_error(
            scan_id,
            path,
            f"the {what} has {image.GetDimension()} dimensions (size {image.GetSize()}), expected 3",
            "Give a 3D volume (for DICOM, the folder of the whole series)",
        )


def _rescale_coefficients(rescale) -> tuple[float, float]:
    try:
        return float(rescale["slope"]), float(rescale["intercept"])
    except (KeyError, TypeError, ValueError) as error:
        raise input_error(
            None, None, f"invalid setting resample.rescale = {rescale!r}", "Set it to null or to {slope: number, intercept: number}"
        ) from error


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(_DICOM_SUFFIXES):
        return True
    # DICOM Part 10 files carry "DICM" after a 128-byte preamble.
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _check_nifti_complete(path: Path, scan_id: str) -> None:
    """Raise when a NIfTI file is truncated or contains NaN or infinite float voxels.

    ITK reads a truncated NIfTI file without an error, and its NIfTI reader
    turns NaN voxels into 0 (seen with SimpleITK 2.5), so both are checked on
    the raw bytes here. A .nii.gz file is decompressed once for that, which
    also detects a broken gzip stream.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
            layout = _nifti_layout(header)
            if layout is None:
                return  # not a NIfTI header; ITK reports what is wrong
            voxel_offset, voxel_bytes, float_dtype = layout
            handle.seek(voxel_offset)
            total_bytes = voxel_offset
            nonfinite = 0
            # Chunks are a multiple of 8 bytes, so float voxels never straddle two chunks.
            while chunk := handle.read(1 << 22):
                total_bytes += len(chunk)
                if float_dtype is not None:
                    usable = len(chunk) - len(chunk) % float_dtype.itemsize
                    nonfinite += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk[:usable], dtype=float_dtype))))
    except (OSError, EOFError, zlib.error) as error:
        raise input_error(
            scan_id, path, f"the file is corrupt or truncated ({error})", "Copy or export the file again"
        ) from error
    expected_bytes = voxel_offset + voxel_bytes
    if total_bytes < expected_bytes:
        raise input_error(
            scan_id,
            path,
            f"the file is truncated: its header announces {expected_bytes} bytes, it holds {total_bytes}",
            "Copy or export the file again",
        )
    if nonfinite:
        raise input_error(
            scan_id,
            path,
            f"the image has {nonfinite} NaN or infinite voxels",
            "Repair or re-export the image; the pipeline does not fill in missing values",
        )


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """Return (voxel offset, voxel bytes, float dtype or None) from a NIfTI-1 or NIfTI-2 header, or None."""
    if len(header) < 348:
        return None
    for endian in "<>":
        header_size = struct.unpack(f"{endian}i", header[:4])[0]
        if header_size == 348:
            dims = struct.unpack(f"{endian}8h", header[40:56])
            datatype, bits_per_voxel = struct.unpack(f"{endian}2h", header[70:74])
            voxel_offset = int(struct.unpack(f"{endian}f", header[108:112])[0])
            break
        if header_size == 540 and len(header) >= 540:
            datatype, bits_per_voxel = struct.unpack(f"{endian}2h", header[12:16])
            dims = struct.unpack(f"{endian}8q", header[16:80])
            voxel_offset = struct.unpack(f"{endian}q", header[168:176])[0]
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7:
        return None
    voxel_count = int(np.prod([max(int(size), 1) for size in dims[1 : rank + 1]], dtype=np.int64))
    # NIfTI datatype codes 16 and 64 are float32 and float64.
    float_dtype = {16: np.dtype(f"{endian}f4"), 64: np.dtype(f"{endian}f8")}.get(datatype)
    return max(voxel_offset, header_size), voxel_count * bits_per_voxel // 8, float_dtype


def _read_single_dicom(path: Path, scan_id: str) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise input_error(
            scan_id,
            path,
            f"reading the DICOM file failed ({_last_line(error)})",
            "Check that the file is complete (not truncated) and a DICOM image; export it again",
        ) from error


def _read_dicom_folder(folder: Path, scan_id: str, series_uid: str | None) -> sitk.Image:
    try:
        series_uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as error:
        raise input_error(scan_id, folder, f"scanning the folder for DICOM files failed ({_last_line(error)})", "Check the folder") from error
    if not series_uids:
        entries = sorted(entry.name for entry in folder.iterdir())
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise input_error(
            scan_id,
            folder,
            f"the path is a folder but contains no DICOM series ({len(entries)} entries: {shown or 'empty'})",
            "Give a DICOM series folder or an image file (NIfTI, MHA, NRRD)",
        )

    if series_uid is None:
        if len(series_uids) > 1:
            listing = "; ".join(_describe_series(folder, uid) for uid in series_uids)
            raise input_error(
                scan_id,
                folder,
                f"the folder contains {len(series_uids)} DICOM series: {listing}",
                f"Choose one with `cohort.dicom_series: {{{scan_id}: <UID>}}` in the config",
            )
        series_uid = series_uids[0]
    elif series_uid not in series_uids:
        raise input_error(
            scan_id,
            folder,
            f"DICOM series {series_uid!r} not found; the folder contains {', '.join(series_uids)}",
            "Correct cohort.dicom_series for this scan",
        )

    file_names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    if len(file_names) == 1:
        return _read_single_dicom(Path(file_names[0]), scan_id)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(file_names)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise input_error(
            scan_id,
            folder,
            f"reading DICOM series {series_uid} ({len(file_names)} files) failed ({_last_line(error)})",
            "A file of the series may be truncated or corrupt; export the series again",
        ) from error

    positions_mm, orientation = _slice_geometry(reader, file_names, scan_id, folder)
    check_slice_positions(positions_mm, orientation, file_names, scan_id, folder)
    return image


def _describe_series(folder: Path, series_uid: str) -> str:
    file_names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    description = ""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_names[0])
    try:
        reader.ReadImageInformation()
        if reader.HasMetaDataKey(_SERIES_DESCRIPTION_TAG):
            description = reader.GetMetaData(_SERIES_DESCRIPTION_TAG).strip()
    except RuntimeError:
        description = ""
    text = f"UID {series_uid} ({len(file_names)} files"
    if description:
        text += f', "{description}"'
    return text + ")"


def _slice_geometry(reader: sitk.ImageSeriesReader, file_names, scan_id: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    positions = []
    for index, file_name in enumerate(file_names):
        if not (reader.HasMetaDataKey(index, _POSITION_TAG) and reader.HasMetaDataKey(index, _ORIENTATION_TAG)):
            raise input_error(
                scan_id,
                file_name,
                "the DICOM file has no ImagePositionPatient (0020,0032) or ImageOrientationPatient (0020,0037)",
                "The slice geometry cannot be checked; convert the series to NIfTI with a tool that handles it (for example dcm2niix)",
            )
        positions.append(_parse_numbers(reader.GetMetaData(index, _POSITION_TAG)))
    orientation = _parse_numbers(reader.GetMetaData(0, _ORIENTATION_TAG))
    return np.array(positions, dtype=float), np.array(orientation, dtype=float)


def _parse_numbers(text: str) -> list[float]:
    return [float(value) for value in text.strip().split("\\") if value.strip()]


def check_slice_positions(positions_mm: np.ndarray, orientation: np.ndarray, file_names, scan_id: str, folder) -> None:
    """Raise when sorted DICOM slices have a gap, uneven spacing, duplicates or gantry tilt.

    Args:
        positions_mm: (n, 3) ImagePositionPatient of each slice, mm, in file order.
        orientation: ImageOrientationPatient (row and column direction cosines, 6 values).
        file_names: n file names, for messages.
    """
    row, column = orientation[:3], orientation[3:6]
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    steps_mm = np.diff(positions_mm, axis=0)
    along_mm = steps_mm @ normal
    in_plane_mm = np.linalg.norm(steps_mm - np.outer(along_mm, normal), axis=1)
    distance_mm = np.abs(along_mm)

    # Compared in position order, because a duplicate slice can make GDCM keep the file order.
    order = np.argsort(positions_mm @ normal, kind="stable")
    duplicates = np.flatnonzero(np.diff(positions_mm[order] @ normal) < SLICE_STEP_TOLERANCE_MM)
    if duplicates.size:
        first, second = int(order[duplicates[0]]), int(order[duplicates[0] + 1])
        raise input_error(
            scan_id,
            folder,
            f"slices {Path(file_names[first]).name!r} and {Path(file_names[second]).name!r} have the same position "
            f"{positions_mm[first].round(3).tolist()} mm ({duplicates.size} duplicate position(s))",
            "The folder may hold two acquisitions with one series UID; keep one of them",
        )
    if np.any(np.sign(along_mm) != np.sign(along_mm[0])):
        raise input_error(
            scan_id, folder, "the slice positions do not form a monotonic sequence along the slice normal", "Check the series for mixed acquisitions"
        )

    tilted = np.flatnonzero(in_plane_mm > SLICE_STEP_TOLERANCE_MM + TILT_TOLERANCE_RELATIVE * distance_mm)
    if tilted.size:
        first = int(tilted[0])
        angle_deg = float(np.degrees(np.arctan2(in_plane_mm[first], distance_mm[first])))
        raise input_error(
            scan_id,
            folder,
            f"the series is acquired with gantry tilt: consecutive slices are shifted {in_plane_mm[first]:.3f} mm within the slice plane "
            f"(about {angle_deg:.2f} degrees from the slice normal)",
            "Resample the series onto an orthogonal grid first (for example with dcm2niix, which corrects gantry tilt) and give the NIfTI file",
        )

    median_mm = float(np.median(distance_mm))
    deviation_mm = np.abs(distance_mm - median_mm)
    uneven = np.flatnonzero(deviation_mm > SLICE_STEP_TOLERANCE_MM + SLICE_STEP_TOLERANCE_RELATIVE * median_mm)
    if uneven.size:
        first = int(uneven[int(np.argmax(deviation_mm[uneven]))])
        kind = "a slice is missing" if distance_mm[first] > 1.5 * median_mm else "the slice spacing is uneven"
        raise input_error(
            scan_id,
            folder,
            f"{kind}: slices {Path(file_names[first]).name!r} and {Path(file_names[first + 1]).name!r} are {distance_mm[first]:.3f} mm apart "
            f"(positions {positions_mm[first].round(3).tolist()} and {positions_mm[first + 1].round(3).tolist()} mm), "
            f"while the median slice spacing is {median_mm:.3f} mm ({uneven.size} irregular step(s))",
            "Export the complete series again, or resample it onto a regular grid and give the NIfTI file",
        )
