"""Cluster execution through Snakemake's generic cluster executor and workflow/profiles/local-cluster.

finished_cohort_run (tests/workflow_support.py) runs the preprocessing of a
four-scan cohort table and one training job with submit.sh, which runs each
job script in the background and logs the resources it was given, and
status.sh, which Snakemake polls for each job's state.
"""

import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import yaml

from workflow_support import (
    COHORT_SPLITS,
    LOCAL_CLUSTER_PROFILE,
    PREPROCESSING_RULES,
    REPOSITORY,
    finished_cohort_run,
    run_snakemake,
    snakemake_command,
)

pytestmark = pytest.mark.workflow

SUBMISSION_COLUMNS = ["job_id", "name", "mem_mb", "runtime", "threads"]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    return finished_cohort_run(tmp_path_factory)


@pytest.fixture(scope="module")
def submissions(cluster_run):
    return pd.read_csv(
        cluster_run.workdir / ".local-cluster/submissions.tsv", sep="\t", names=SUBMISSION_COLUMNS, dtype={"name": str}
    )


@pytest.fixture(scope="module")
def status_log(cluster_run):
    return pd.read_csv(cluster_run.workdir / ".local-cluster/status.log", sep="\t", names=["job_id", "state"])


def test_outputs_written(cluster_run):
    assert (cluster_run.workdir / "results/train/dram/model.pt").stat().st_size > 0


def test_one_group_job_per_scan(submissions):
    grouped = submissions[submissions["name"].str.startswith("preprocess_scan")]
    assert len(grouped) == len(COHORT_SPLITS)


def test_rule_resources_reach_submit_command(submissions):
    training = submissions[submissions["name"] == "train_method"].iloc[0]
    assert (training["mem_mb"], training["runtime"]) == (8000, 24 * 60)


def test_default_resources_reach_submit_command(submissions):
    index = submissions[submissions["name"] == "index_chunks"].iloc[0]
    assert (index["mem_mb"], index["runtime"]) == (1000, 10)


def test_every_job_polled_to_success(submissions, status_log):
    succeeded = set(status_log.loc[status_log["state"] == "success", "job_id"])
    assert set(submissions["job_id"]) == succeeded


def test_jobs_polled_while_running(status_log):
    assert "running" in set(status_log["state"])


@pytest.mark.parametrize("profile", ["slurm", "local-cluster"])
def test_profile_groups_preprocessing(profile):
    settings = yaml.safe_load((REPOSITORY / "workflow/profiles" / profile / "config.yaml").read_text())
    assert set(settings["groups"]) == set(PREPROCESSING_RULES)


def test_slurm_profile_gives_training_a_gpu():
    settings = yaml.safe_load((REPOSITORY / "workflow/profiles/slurm/config.yaml").read_text())
    assert settings["set-resources"]["train_method"]["gpu"] == 1


def test_local_cluster_scripts_executable():
    assert all(path.stat().st_mode & 0o111 for path in (LOCAL_CLUSTER_PROFILE / "submit.sh", LOCAL_CLUSTER_PROFILE / "status.sh"))


@pytest.fixture(scope="module")
def stale_lock(tmp_path_factory):
    """A working folder whose run was killed while it held Snakemake's lock (as after a lost login session)."""
    run = finished_cohort_run(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("locked")
    target = "results/chunks/chest_v00/chunks.h5"
    process = subprocess.Popen(
        snakemake_command(workdir, run.config_path, target),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    locks = workdir / ".snakemake" / "locks"
    deadline = time.monotonic() + 60
    while not (locks.is_dir() and any(locks.iterdir())) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return workdir, run.config_path, target


def test_second_run_stopped_by_lock(stale_lock):
    process = run_snakemake(*stale_lock)
    assert "Directory cannot be locked" in process.stdout + process.stderr


def test_unlock_lets_next_run_start(stale_lock):
    workdir, config_path, target = stale_lock
    run_snakemake(workdir, config_path, extra=("--unlock",))
    assert run_snakemake(workdir, config_path, target, extra=("--dry-run",)).returncode == 0
