"""Real Snakemake runs of the whole workflow on the small demo configuration (tests/workflow_support.py)."""

import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_support import (
    DEMO_SPLITS,
    default_config_with_absolute_paths,
    finished_demo_run,
    planned_jobs,
    run_snakemake,
    rules_of,
)

pytestmark = pytest.mark.workflow

TEST_SCANS = [scan for scan, split in DEMO_SPLITS.items() if split == "test"]


def geometry(image: sitk.Image) -> list[float]:
    """Size, spacing (mm), origin (mm) and direction cosines of an image as one flat list."""
    return [*image.GetSize(), *image.GetSpacing(), *image.GetOrigin(), *image.GetDirection()]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return finished_demo_run(tmp_path_factory)


def test_default_config_dry_run(tmp_path):
    config = default_config_with_absolute_paths(tmp_path / "defaults.yaml")
    workdir = tmp_path / "work"
    workdir.mkdir()
    rules = rules_of(planned_jobs(workdir, config))
    assert {"fetch_demo_wheel", "train_method", "tabulate_comparison", "plot_coronal"} <= rules


def test_small_run_comparison_rows(demo_run):
    table = pd.read_csv(demo_run.workdir / "results/tables/comparison.csv")
    assert list(table["method"]) == demo_run.config["evaluation"]["comparison"]


def test_small_run_ablation_rows(demo_run):
    table = pd.read_csv(demo_run.workdir / "results/tables/ablation.csv")
    assert list(table["method"]) == demo_run.config["evaluation"]["ablation"]


def test_small_run_cohort_table(demo_run):
    table = pd.read_csv(demo_run.workdir / "results/tables/cohort.csv").set_index("split")
    assert table.loc["all", "scans"] == len(DEMO_SPLITS)


@pytest.mark.parametrize(
    "figure", ["cohort.png", "attention.png", "dsc.png", "dsc_subtypes.png", "training.png", "confusion_proposed.png"]
)
def test_small_run_figure(demo_run, figure):
    assert (demo_run.workdir / "results/figures" / figure).stat().st_size > 0


@pytest.mark.parametrize("scan", TEST_SCANS)
def test_small_run_coronal_figure(demo_run, scan):
    assert (demo_run.workdir / "results/figures/coronal" / f"{scan}.png").stat().st_size > 0


@pytest.mark.parametrize("method", ["dcam", "dram", "dram-p", "proposed"])
@pytest.mark.parametrize("scan", TEST_SCANS)
def test_small_run_mask_on_ct_grid(demo_run, method, scan):
    ct = sitk.ReadImage(f"{demo_run.config['demo']['output_dir']}/scans/{scan}/ct.nii.gz")
    mask = sitk.ReadImage(str(demo_run.workdir / "results/infer" / method / scan / "lesion.nii.gz"))
    assert geometry(mask) == pytest.approx(geometry(ct), abs=1e-4)


def test_second_run_does_nothing(demo_run):
    process = run_snakemake(demo_run.workdir, demo_run.config_path)
    assert "Nothing to be done" in process.stdout + process.stderr
