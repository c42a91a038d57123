"""Incremental reruns: Snakemake's own dry-run job list after adding a scan or changing one setting.

Adding a scan uses a user cohort table (tests/workflow_support.py,
finished_cohort_run): appending a row leaves every other scan's record
unchanged. Adding a demo variant instead can move existing variants to
another split, because the demo plan makes the last variants test and the
ones before them val. That changes their records and reruns their jobs, which
the variant tests below pin down.
"""

import copy
from pathlib import Path

import pytest

from workflow_support import (
    COHORT_SPLITS,
    COHORT_TARGETS,
    DEMO_SPLITS,
    PREPROCESSING_RULES,
    built_demo_scans,
    finished_cohort_run,
    finished_demo_run,
    planned_jobs,
    rules_of,
    scans_of,
    write_cohort_table,
    write_config,
)

pytestmark = pytest.mark.workflow

NEW_SCAN = "chest_v04"
NEW_VARIANT = "chest_v05"
# With 6 variants instead of 5 the plan makes v04, v05 test, v03 val (was test)
# and v02 train (was val).
RESPLIT_VARIANTS = {"chest_v02", "chest_v03"}


@pytest.fixture(scope="module")
def jobs_after_adding_scan(tmp_path_factory):
    """Jobs planned for the cohort run's targets once the table gains one test scan (the table is restored after)."""
    run = finished_cohort_run(tmp_path_factory)
    table = Path(run.config["cohort"]["table"])
    original = table.read_text()
    try:
        write_cohort_table(table, built_demo_scans(tmp_path_factory), {**COHORT_SPLITS, NEW_SCAN: "test"})
        return planned_jobs(run.workdir, run.config_path, *COHORT_TARGETS)
    finally:
        table.write_text(original)


@pytest.fixture(scope="module")
def jobs_after_threshold_change(tmp_path_factory):
    """Jobs planned for `all` of the finished demo run after candidates.vessel_threshold changes."""
    run = finished_demo_run(tmp_path_factory)
    config = copy.deepcopy(run.config)
    config["candidates"]["vessel_threshold"] = 0.4
    changed = write_config(run.config_path.with_name("threshold.yaml"), config)
    return planned_jobs(run.workdir, changed)


@pytest.fixture(scope="module")
def jobs_after_adding_variant(tmp_path_factory):
    """Jobs planned for `all` of the finished demo run with a sixth demo variant."""
    run = finished_demo_run(tmp_path_factory)
    config = copy.deepcopy(run.config)
    config["demo"]["sources"][0]["variants"] = len(DEMO_SPLITS) + 1
    changed = write_config(run.config_path.with_name("six-variants.yaml"), config)
    return planned_jobs(run.workdir, changed)


@pytest.mark.parametrize("rule", PREPROCESSING_RULES)
def test_added_scan_preprocessed_alone(jobs_after_adding_scan, rule):
    assert scans_of(jobs_after_adding_scan, rule) == {NEW_SCAN}


def test_added_scan_reruns_index(jobs_after_adding_scan):
    assert "index_chunks" in rules_of(jobs_after_adding_scan)


def test_added_test_scan_retrains_nothing(jobs_after_adding_scan):
    # The new scan is a test scan, and training reads only train and val chunks.
    assert "train_method" not in rules_of(jobs_after_adding_scan)


def test_added_variant_built_alone(jobs_after_adding_variant):
    assert scans_of(jobs_after_adding_variant, "build_demo_variant") == {NEW_VARIANT}


def test_added_variant_keeps_source(jobs_after_adding_variant):
    assert "build_demo_source" not in rules_of(jobs_after_adding_variant)


def test_added_variant_reregisters_resplit_scans(jobs_after_adding_variant):
    assert scans_of(jobs_after_adding_variant, "register_scan") == RESPLIT_VARIANTS | {NEW_VARIANT}


def test_unchanged_cohort_plans_nothing(tmp_path_factory):
    run = finished_cohort_run(tmp_path_factory)
    assert planned_jobs(run.workdir, run.config_path, *COHORT_TARGETS) == []


@pytest.mark.parametrize("rule", ["build_demo_source", "build_demo_variant", "register_scan", "lookup_lobes", "resample_scan"])
def test_threshold_change_keeps_upstream(jobs_after_threshold_change, rule):
    assert rule not in rules_of(jobs_after_threshold_change)


@pytest.mark.parametrize("rule", ["find_candidates", "calibrate_intervals", "write_chunks"])
def test_threshold_change_reruns_scan_jobs(jobs_after_threshold_change, rule):
    assert scans_of(jobs_after_threshold_change, rule) == set(DEMO_SPLITS)


@pytest.mark.parametrize("rule", ["index_training_chunks", "train_method", "infer_scan", "evaluate_scan", "tabulate_comparison"])
def test_threshold_change_reruns_downstream(jobs_after_threshold_change, rule):
    assert rule in rules_of(jobs_after_threshold_change)
