"""Faults during a run: jobs killed while writing, interrupted training, a locked folder and a full disk.

Killed jobs are real subprocesses of the stage entry points. A small launcher
script stalls the child right after a writer has filled its temporary file
(before the rename), touches a marker file, and the test then sends SIGKILL.
Training resume without a kill is tested in test_train.py
(test_resume_matches_uninterrupted).
"""

from __future__ import annotations

import copy
import errno
import fnmatch
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import yaml
from test_lobes import synthetic_ct_zyx, synthetic_lobes_zyx, to_image
from test_train import CHUNK, make_chunk

from dramseg import chunks, io, resample, train
from dramseg.anatomy import LOBE_LABELS, LOBE_NAMES
from dramseg.intervals import parse_score_intervals

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPOSITORY / "config.yaml").read_text())
CHILD_TIMEOUT_S = 120

# Runs `<module>.main(argv)`; DRAMSEG_TEST_FAULT makes one writer stall after
# filling its temporary file, so the parent can kill the process at that point.
LAUNCHER = textwrap.dedent(
    """
    import importlib, os, sys, time
    from pathlib import Path

    fault = os.environ.get("DRAMSEG_TEST_FAULT", "")
    marker = Path(os.environ.get("DRAMSEG_TEST_MARKER", "marker"))

    def stall():
        marker.touch()
        time.sleep(600)

    def stall_after(function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            stall()
            return result
        return wrapper

    if fault == "hdf5":
        import h5py
        h5py.Group.create_dataset = stall_after(h5py.Group.create_dataset)
    elif fault == "nifti":
        import SimpleITK
        SimpleITK.WriteImage = stall_after(SimpleITK.WriteImage)
    elif fault == "checkpoint":
        import torch
        torch.save = stall_after(torch.save)
    elif fault == "after-checkpoint":
        from dramseg import train
        train._save_checkpoint = stall_after(train._save_checkpoint)

    importlib.import_module(sys.argv[1]).main(sys.argv[2:])
    """
)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("launcher") / "launch.py"
    path.write_text(LAUNCHER)
    return path


def run_child(launcher: Path, module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `module.main(argv)` to completion in a child process; raise with its log on failure."""
    process = subprocess.run(
        [sys.executable, str(launcher), module, *argv], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return process


def kill_during(launcher: Path, module: str, argv: list[str], fault: str, marker: Path) -> None:
    """Start `module.main(argv)` with a stalling writer and SIGKILL it once the writer has stalled."""
    environment = dict(os.environ, DRAMSEG_TEST_FAULT=fault, DRAMSEG_TEST_MARKER=str(marker))
    process = subprocess.Popen(
        [sys.executable, str(launcher), module, *argv], stderr=subprocess.PIPE, text=True, env=environment
    )
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"the child ended before the fault (exit {process.returncode}):\n{process.stderr.read()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the child did not reach the fault in time")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()


def visible_files(folder: Path) -> list[str]:
    """Names of the files in `folder` that are not hidden temporary files."""
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith("."))


def hidden_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def formatted(error: BaseException) -> str:
    """The traceback text as a job log shows it, notes included."""
    return "".join(traceback.format_exception(error))


# Killed while writing an HDF5 chunk store.


@pytest.fixture(scope="module")
def chunk_inputs(tmp_path_factory) -> dict:
    """Files of one resampled scan and the arguments of `python -m dramseg.chunks write` without --out."""
    folder = tmp_path_factory.mktemp("chunk-inputs")
    lobes_zyx = synthetic_lobes_zyx()
    candidates_zyx = ((lobes_zyx > 0) & (np.indices(lobes_zyx.shape)[2] % 5 == 0)).astype(np.uint8)
    files = {"ct": to_image(synthetic_ct_zyx(lobes_zyx)), "lobes": to_image(lobes_zyx),
             "candidates": to_image(candidates_zyx), "vessels": to_image(np.zeros_like(lobes_zyx))}  # fmt: skip
    for name, image in files.items():
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    io.write_json({"scan_id": "s1", "split": "train", "scores": {name: 2 for name in LOBE_NAMES}}, folder / "record.json")
    table = pd.DataFrame({"lobe": list(LOBE_NAMES), "p_star": [0.2] * 5})
    intervals = chunks.calibrate_lobes(
        "s1", "train", {name: 2 for name in LOBE_NAMES}, table, parse_score_intervals(CONFIG["chunks"]["score_intervals"]), 0.05
    )
    io.write_csv(intervals, folder / "intervals.csv")
    settings = json.dumps({"chunks": dict(CONFIG["chunks"], shape=[16, 16, 16])})
    argv = ["write", "--record", str(folder / "record.json"), "--intervals", str(folder / "intervals.csv"), "--settings", settings]
    for name in files:
        argv += [f"--{name}", str(folder / f"{name}.nii.gz")]
    return {"folder": folder, "argv": argv}


def store_contents(path: Path) -> dict:
    """Every dataset and attribute of an HDF5 file, keyed by object path."""
    contents = {"/": {key: np.asarray(value).tolist() for key, value in h5py.File(path, "r").attrs.items()}}
    with h5py.File(path, "r") as store:

        def visit(name, item):
            contents[name] = {key: np.asarray(value).tolist() for key, value in item.attrs.items()}
            if isinstance(item, h5py.Dataset):
                contents[name]["data"] = item[...].tolist()

        store.visititems(visit)
    return contents


@pytest.fixture(scope="module")
def killed_chunk_store(tmp_path_factory, launcher, chunk_inputs) -> dict:
    """An uninterrupted store, and the folder of a run killed mid-write before and after its rerun."""
    uninterrupted = tmp_path_factory.mktemp("store-uninterrupted") / "chunks.h5"
    chunks.main([*chunk_inputs["argv"], "--out", str(uninterrupted)])
    folder = tmp_path_factory.mktemp("store-killed")
    out = folder / "chunks.h5"
    kill_during(launcher, "dramseg.chunks", [*chunk_inputs["argv"], "--out", str(out)], "hdf5", folder.parent / "hdf5.marker")
    after_kill = {"visible": visible_files(folder), "hidden": hidden_files(folder)}
    run_child(launcher, "dramseg.chunks", [*chunk_inputs["argv"], "--out", str(out)])
    return {"uninterrupted": uninterrupted, "rerun": out, "after_kill": after_kill}


def test_killed_store_leaves_no_output(killed_chunk_store):
    assert killed_chunk_store["after_kill"]["visible"] == []


def test_killed_store_leaves_hidden_temporary(killed_chunk_store):
    hidden = killed_chunk_store["after_kill"]["hidden"]
    assert len(hidden) == 1
    assert fnmatch.fnmatch(hidden[0], ".chunks.*.h5")


def test_rerun_store_equals_uninterrupted(killed_chunk_store):
    assert store_contents(killed_chunk_store["rerun"]) == store_contents(killed_chunk_store["uninterrupted"])


# Killed while writing NIfTI files (the resample stage writes two images and a JSON file).


RESAMPLE_OUTPUTS = ("ct.nii.gz", "lobes.nii.gz", "box.json")


@pytest.fixture(scope="module")
def resample_inputs(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("resample-inputs")
    lobes_zyx = synthetic_lobes_zyx()
    sitk.WriteImage(sitk.Cast(to_image(synthetic_ct_zyx(lobes_zyx)), sitk.sitkInt16), str(folder / "ct.nii.gz"))
    sitk.WriteImage(to_image(lobes_zyx), str(folder / "lobes.nii.gz"))
    io.write_json({"scan_id": "s1", "ct": str(folder / "ct.nii.gz")}, folder / "record.json")
    settings = json.dumps({"resample": CONFIG["resample"], "cohort": {"dicom_series": {}}})
    return ["--record", str(folder / "record.json"), "--lobes", str(folder / "lobes.nii.gz"), "--settings", settings]


def resample_argv(inputs: list[str], folder: Path) -> list[str]:
    names = ("--out-ct", "--out-lobes", "--out-box")
    return [*inputs, *[part for option, name in zip(names, RESAMPLE_OUTPUTS) for part in (option, str(folder / name))]]


@pytest.fixture(scope="module")
def killed_resample(tmp_path_factory, launcher, resample_inputs) -> dict:
    uninterrupted = tmp_path_factory.mktemp("resample-uninterrupted")
    resample.main(resample_argv(resample_inputs, uninterrupted))
    folder = tmp_path_factory.mktemp("resample-killed")
    argv = resample_argv(resample_inputs, folder)
    kill_during(launcher, "dramseg.resample", argv, "nifti", folder.parent / "nifti.marker")
    after_kill = {"visible": visible_files(folder), "hidden": hidden_files(folder)}
    run_child(launcher, "dramseg.resample", argv)
    return {"uninterrupted": uninterrupted, "rerun": folder, "after_kill": after_kill}


def test_killed_image_write_leaves_no_output(killed_resample):
    assert killed_resample["after_kill"]["visible"] == []


def test_killed_image_write_leaves_hidden_temporary(killed_resample):
    hidden = killed_resample["after_kill"]["hidden"]
    assert len(hidden) == 1
    assert fnmatch.fnmatch(hidden[0], ".ct.*.nii.gz")


@pytest.mark.parametrize("name", RESAMPLE_OUTPUTS[:2])
def test_rerun_image_equals_uninterrupted(killed_resample, name):
    first = sitk.ReadImage(str(killed_resample["uninterrupted"] / name))
    second = sitk.ReadImage(str(killed_resample["rerun"] / name))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(second), sitk.GetArrayViewFromImage(first))
    assert (second.GetSpacing(), second.GetOrigin(), second.GetDirection()) == (first.GetSpacing(), first.GetOrigin(), first.GetDirection())


def test_rerun_box_equals_uninterrupted(killed_resample):
    first = io.read_json(killed_resample["uninterrupted"] / "box.json")
    assert io.read_json(killed_resample["rerun"] / "box.json") == first


# Training killed while writing its checkpoint, and after it.


@pytest.fixture(scope="module")
def training_setup(tmp_path_factory) -> dict:
    """A chunk index of two train scans and one val scan, the train settings and an uninterrupted run."""
    folder = tmp_path_factory.mktemp("train-stores")
    rng = np.random.default_rng(1)
    fractions = {0: 0.0, 1: 0.03, 2: 0.15, 3: 0.35}
    rows = []
    for scan_number, split in enumerate(["train", "train", "val"]):
        scan_id = f"scan{scan_number}"
        store_path = folder / f"{scan_id}.h5"
        with h5py.File(store_path, "w") as store:
            store.attrs.update({"scan_id": scan_id, "split": split, "chunk_shape_zyx": [CHUNK] * 3})
            for lobe_number, lobe in enumerate(LOBE_NAMES):
                score = (lobe_number + scan_number) % len(fractions)
                low, high = (0.0, 0.0) if score == 0 else (fractions[score] - 0.02, fractions[score] + 0.04)
                group = store.create_group(f"lobes/{lobe}")
                for name, array in make_chunk(rng, fractions[score]).items():
                    group.create_dataset(name, data=array)
                group.attrs.update({"label": LOBE_LABELS[lobe], "score": score, "interval": [low, high]})
                rows.append({"scan_id": scan_id, "split": split, "lobe": lobe, "store": str(store_path),
                             "score": score, "low": low, "high": high, "p_star": fractions[score]})  # fmt: skip
    index = folder / "index.csv"
    pd.DataFrame(rows).to_csv(index, index=False)

    settings = {key: copy.deepcopy(CONFIG[key]) for key in ("device", "allow_cpu_fallback", "seed", "model", "training", "chunks", "resample")}
    settings["chunks"]["shape"] = [CHUNK] * 3
    settings["model"].update({"base_width": 4, "depth": 2})
    settings["training"].update({"epochs": 3, "batch_size": 5, "checkpoint_every": 1})
    settings["method"] = {"kind": "regression", "er": False, "ref": False, "attention": False}

    uninterrupted = tmp_path_factory.mktemp("train-uninterrupted")
    train.train_method("dram", index, uninterrupted / "model.pt", uninterrupted / "history.csv", uninterrupted / "checkpoints", settings)
    return {"index": index, "settings": settings, "uninterrupted": uninterrupted}


def train_argv(setup: dict, folder: Path) -> list[str]:
    return ["--method", "dram", "--index", str(setup["index"]), "--out-model", str(folder / "model.pt"),
            "--out-history", str(folder / "history.csv"), "--checkpoint-dir", str(folder / "checkpoints"),
            "--settings", json.dumps(setup["settings"])]  # fmt: skip


def killed_training(tmp_path_factory, launcher, setup: dict, fault: str) -> dict:
    folder = tmp_path_factory.mktemp(f"train-{fault}")
    kill_during(launcher, "dramseg.train", train_argv(setup, folder), fault, folder.parent / f"{fault}.marker")
    after_kill = {"checkpoints": visible_files(folder / "checkpoints"), "outputs": visible_files(folder)}
    rerun = run_child(launcher, "dramseg.train", train_argv(setup, folder))
    return {"folder": folder, "after_kill": after_kill, "log": rerun.stderr}


@pytest.fixture(scope="module")
def killed_in_checkpoint(tmp_path_factory, launcher, training_setup) -> dict:
    return killed_training(tmp_path_factory, launcher, training_setup, "checkpoint")


@pytest.fixture(scope="module")
def killed_after_checkpoint(tmp_path_factory, launcher, training_setup) -> dict:
    return killed_training(tmp_path_factory, launcher, training_setup, "after-checkpoint")


def assert_same_training(folder: Path, uninterrupted: Path) -> None:
    first = pd.read_csv(uninterrupted / "history.csv")
    second = pd.read_csv(folder / "history.csv")
    np.testing.assert_allclose(second["train_loss"], first["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(second["val_loss"], first["val_loss"], rtol=1e-5)
    first_state = torch.load(uninterrupted / "model.pt", weights_only=False)["state_dict"]
    second_state = torch.load(folder / "model.pt", weights_only=False)["state_dict"]
    for key, value in first_state.items():
        torch.testing.assert_close(second_state[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_killed_checkpoint_write_leaves_none(killed_in_checkpoint):
    assert killed_in_checkpoint["after_kill"]["checkpoints"] == []


def test_killed_checkpoint_write_restarts(killed_in_checkpoint):
    assert "resuming" not in killed_in_checkpoint["log"]


def test_killed_checkpoint_write_rerun_equal(killed_in_checkpoint, training_setup):
    assert_same_training(killed_in_checkpoint["folder"], training_setup["uninterrupted"])


def test_killed_training_keeps_checkpoint(killed_after_checkpoint):
    assert killed_after_checkpoint["after_kill"] == {"checkpoints": ["last.pt"], "outputs": ["checkpoints"]}


def test_killed_training_resumes(killed_after_checkpoint):
    assert "resuming dram from the checkpoint of epoch 1" in killed_after_checkpoint["log"]


def test_killed_training_rerun_equal(killed_after_checkpoint, training_setup):
    assert_same_training(killed_after_checkpoint["folder"], training_setup["uninterrupted"])


# Snakemake: failed jobs and the lock of the working folder.

TINY_SNAKEFILE = textwrap.dedent(
    """
    rule fail_after_writing:
        output: "failed.txt"
        shell: "echo partial > {output}; exit 1"

    rule wait:
        output: "waited.txt"
        shell: "touch started; if [ -e slow ]; then sleep 600; fi; touch {output}"
    """
)


def snakemake(folder: Path, *arguments: str, background: bool = False):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(folder / "Snakefile"), "--directory", str(folder), "--cores", "1", *arguments]
    if background:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)


@pytest.fixture
def tiny_workflow(tmp_path) -> Path:
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE)
    return tmp_path


def test_failed_job_output_removed(tiny_workflow):
    process = snakemake(tiny_workflow, "failed.txt")
    assert process.returncode != 0
    assert not (tiny_workflow / "failed.txt").exists()


def test_second_run_locked_until_unlock(tiny_workflow):
    (tiny_workflow / "slow").touch()
    first = snakemake(tiny_workflow, "waited.txt", background=True)
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while not (tiny_workflow / "started").exists():
            assert first.poll() is None, "the first run ended before its job started"
            assert time.monotonic() < deadline, "the first run did not start its job in time"
            time.sleep(0.1)
        second = snakemake(tiny_workflow, "waited.txt")
    finally:
        # A SIGKILL leaves the lock behind, as a crashed run or a power loss does.
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stderr + second.stdout

    (tiny_workflow / "slow").unlink()
    assert snakemake(tiny_workflow, "--unlock").returncode == 0
    third = snakemake(tiny_workflow, "waited.txt")
    assert third.returncode == 0, third.stderr[-3000:]


# Disk full while writing.


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs mounted in tmp_path; skipped where mounting is not allowed."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield folder
    finally:
        # A writer's file may stay open in a traceback cycle until collected, which keeps the mount busy.
        gc.collect()
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)


def write_large_image(path: Path) -> None:
    noise_zyx = np.random.default_rng(0).normal(size=(64, 64, 96)).astype(np.float32)
    io.write_image(sitk.GetImageFromArray(noise_zyx), path)


def write_large_json(path: Path) -> None:
    io.write_json({"values": list(range(300_000))}, path)


def write_large_csv(path: Path) -> None:
    io.write_csv(pd.DataFrame({"value": np.arange(300_000)}), path)


def write_large_store(path: Path) -> None:
    with io.atomic_path(path) as temporary, h5py.File(temporary, "w") as store:
        store.create_dataset("image", data=np.random.default_rng(0).normal(size=(64, 64, 64)))


def write_large_checkpoint(path: Path) -> None:
    model = torch.nn.Linear(600, 600)
    train._save_checkpoint(path, "hash", 1, model, torch.optim.Adam(model.parameters()), [], None)


FULL_DISK_WRITERS = {
    "ct.nii.gz": write_large_image,
    "qc.json": write_large_json,
    "lobes.csv": write_large_csv,
    "chunks.h5": write_large_store,
    "last.pt": write_large_checkpoint,
}


@pytest.mark.parametrize("name", FULL_DISK_WRITERS)
def test_full_disk_error_names_file(full_disk, name):
    with pytest.raises((OSError, RuntimeError)) as caught:
        FULL_DISK_WRITERS[name](full_disk / name)
    assert str(full_disk / name) in formatted(caught.value)


@pytest.mark.parametrize("name", FULL_DISK_WRITERS)
def test_full_disk_leaves_nothing(full_disk, name):
    with pytest.raises((OSError, RuntimeError)):
        FULL_DISK_WRITERS[name](full_disk / name)
    assert list(full_disk.iterdir()) == []


def test_write_error_in_store_leaves_nothing(tmp_path, monkeypatch, chunk_inputs):
    """Without a small disk: the third HDF5 dataset write fails with ENOSPC, as on a full disk."""
    original = h5py.Group.create_dataset
    calls = []

    def fail_third_dataset(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_third_dataset)
    out = tmp_path / "chunks.h5"
    with pytest.raises(OSError, match="No space left on device") as caught:
        chunks.main([*chunk_inputs["argv"], "--out", str(out)])
    assert str(out) in formatted(caught.value)
    assert list(tmp_path.iterdir()) == []
