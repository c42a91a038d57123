"""Apply mode: a trained model on a new cohort without scores or references, through real Snakemake."""

import json

import pandas as pd
import pytest

from workflow_support import DEMO_SPLITS, finished_demo_run, planned_jobs, rules_of, run_snakemake, write_config

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def apply_run(tmp_path_factory):
    demo = finished_demo_run(tmp_path_factory)
    folder = tmp_path_factory.mktemp("apply")
    scans_dir = demo.workdir / demo.config["demo"]["output_dir"] / "scans"
    scan = next(scan for scan, split in DEMO_SPLITS.items() if split == "test")
    table = folder / "new.csv"
    pd.DataFrame(
        [{"scan_id": "new01", "ct": scans_dir / scan / "ct.nii.gz", "lobes": scans_dir / scan / "lobes.nii.gz",
          "split": "test", "score_lul": "", "score_lll": "", "score_rul": "", "score_rml": "", "score_rll": ""}]
    ).to_csv(table, index=False)
    config = dict(demo.config)
    config.update(
        mode="apply",
        apply={"checkpoint": str(demo.workdir / "results/train/proposed/model.pt"), "method": "proposed"},
        cohort={**demo.config.get("cohort", {}), "table": str(table)},
    )
    config_path = write_config(folder / "apply.yaml", config)
    other_chunks = write_config(folder / "apply-24.yaml", {**config, "chunks": {"shape": [24, 24, 24]}})
    workdir = folder / "work"
    workdir.mkdir()
    return workdir, config_path, other_chunks


def test_apply_runs_no_training(apply_run):
    workdir, config_path, _ = apply_run
    rules = rules_of(planned_jobs(workdir, config_path))
    assert "infer_scan" in rules
    assert "train_method" not in rules
    assert "build_demo_variant" not in rules


def test_apply_writes_severity_report(apply_run):
    workdir, config_path, _ = apply_run
    process = run_snakemake(workdir, config_path)
    assert process.returncode == 0, process.stderr[-4000:]
    table = pd.read_csv(workdir / "results/tables/severity.csv")
    assert list(table["scan_id"]) == ["new01"]
    report = json.loads((workdir / "results/infer/proposed/new01/severity.json").read_text())
    assert report["total_severity_score"] == sum(lobe["score"] for lobe in report["lobes"].values())
    assert (workdir / "results/infer/proposed/new01/lesion.nii.gz").is_file()


def test_apply_rejects_contradicting_chunk_size(apply_run, tmp_path):
    _, _, other_chunks = apply_run
    other = tmp_path / "work"
    other.mkdir()
    process = run_snakemake(other, other_chunks)
    assert process.returncode != 0
    assert "was trained with chunks.shape" in process.stdout + process.stderr + _logs(other)


def _logs(workdir):
    return "".join(path.read_text() for path in workdir.glob("logs/infer/**/*.log"))
