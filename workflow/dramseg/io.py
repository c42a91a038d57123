"""Atomic writers: every output is written to a temporary file in the same folder and renamed.

An interrupted job therefore never leaves a file that looks finished to Snakemake.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

import SimpleITK as sitk

# Size of a NIfTI-1 header; the voxels of a single-file .nii start at byte 352 or later.
NIFTI_HEADER_BYTES = 348


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    The temporary name keeps the final suffix (for example `.nii.gz`) so that
    writers which choose a format by extension still work. On any exception the
    temporary file is removed and the exception propagates.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes) or ".tmp"
    handle, temporary = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=suffix, dir=final.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        # mkstemp creates files readable by the owner only; give the output the
        # permissions an ordinary new file gets under the current umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_path, 0o666 & ~umask)
        os.replace(temporary_path, final)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
        # Writers such as h5py, torch.save and json report the temporary name or
        # none at all; the note names the output in the traceback.
        if isinstance(error, Exception):
            error.add_note(f"while writing {str(final)!r}; no partial file was left there")
        raise


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image atomically; raise OSError naming the file on failure."""
    with atomic_path(path) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=compress)
        except RuntimeError as error:
            raise OSError(f"writing image {str(path)!r} failed: {error}") from error
        if temporary.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_written(temporary, path, image)


def _check_nifti_written(temporary: Path, path, image: sitk.Image) -> None:
    """Raise OSError when a NIfTI file contains fewer bytes than the image's voxels need.

    ITK's NIfTI writer (SimpleITK 2.5) only prints an error and returns normally
    when the disk fills up, so it leaves a truncated file. This check catches that case.
    """
    voxel_bytes = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    expected_bytes = NIFTI_HEADER_BYTES + voxel_bytes
    if temporary.name.lower().endswith(".gz"):
        written_bytes = 0
        try:
            with gzip.open(temporary, "rb") as handle:
                while block := handle.read(1 << 22):
                    written_bytes += len(block)
        except (OSError, EOFError, zlib.error):
            written_bytes = -1
    else:
        written_bytes = temporary.stat().st_size
    if written_bytes < expected_bytes:
        found = "an incomplete gzip stream" if written_bytes < 0 else f"{written_bytes} bytes"
        raise OSError(
            errno.EIO,
            f"writing image {str(path)!r} failed: the NIfTI file holds {found}, expected at least {expected_bytes} "
            "(is the disk full?)",
        )


def write_json(data, path: str | os.PathLike) -> None:
    """Write JSON atomically, indented and with sorted keys for readable diffs."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike):
    """Read a JSON file; raise ValueError naming the file when it is not valid JSON."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"file {str(path)!r} is not valid JSON: {error}") from error


def write_csv(frame, path: str | os.PathLike, **kwargs) -> None:
    """Write a pandas DataFrame as CSV atomically, without the index."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, **kwargs)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def _json_default(value):
    # numpy scalars and arrays appear in QC and metric dictionaries.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
