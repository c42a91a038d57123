"""Small configurations and helpers for tests that run the real Snakemake workflow.

The small run uses one demo source: a 3 mm chest crop of the TCGA-DE-A4MA
scan, written into the test's temporary folder, with five synthetic variants
(2 train, 1 val, 2 test). Lobe chunks are 16 voxels wide, the network is 4
channels wide and 2 levels deep, and training lasts two epochs, so `all`
finishes in about 2-3 minutes on 2 cores.

Jobs that Snakemake would run are read from `--dry-run --printshellcmds`
with the default logger: every job is printed as a block that starts with a
line `rule NAME:` (or `localrule NAME:`) and lists `wildcards: key=value, ...`
and `output: path, ...` lines. That text layout has been stable through
Snakemake 7 to 9; `planned_jobs` raises when a dry run names jobs in its
statistics table but no block could be read, so a change of layout fails
loudly instead of passing with an empty job list.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import SimpleITK as sitk
import yaml

from dramseg.anatomy import SCORE_ORDER

REPOSITORY = Path(__file__).resolve().parents[1]
SNAKEFILE = REPOSITORY / "Snakefile"
DEFAULT_CONFIG = REPOSITORY / "config.yaml"
SHARED_DATA = REPOSITORY.parent / "shared" / "data"
TCGA_CT = SHARED_DATA / "tcga-de-a4ma" / "ct-2mm.nii.gz"

# Rules that run once per scan before training.
PREPROCESSING_RULES = ("register_scan", "lookup_lobes", "resample_scan", "find_candidates", "calibrate_intervals", "write_chunks")

_RULE_LINE = re.compile(r"^(?:local)?rule (?P<rule>[A-Za-z_][A-Za-z0-9_]*):\s*$")
_FIELD_LINE = re.compile(r"^\s+(?P<key>[a-z]+): (?P<value>.*)$")
_STATS_LINE = re.compile(r"^(?P<rule>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<count>\d+)\s*$")


def write_chest_crop(path: Path, spacing_mm: float = 3.0) -> Path:
    """Write the chest of the whole-body TCGA-DE-A4MA scan at `spacing_mm` (isotropic) as int16 NIfTI.

    The crop keeps the upper 180 slices and the central 360 mm in x and y of
    the 2 mm scan (the lungs with chest wall and mediastinum), about
    120 x 120 x 120 voxels at 3 mm.
    """
    whole = sitk.ReadImage(str(TCGA_CT))
    chest = sitk.Cast(whole[35:215, 35:215, 136:], sitk.sitkFloat32)
    size = [max(1, round(count * old / spacing_mm)) for count, old in zip(chest.GetSize(), chest.GetSpacing())]
    chest = sitk.Resample(
        chest, size, sitk.Transform(), sitk.sitkLinear, chest.GetOrigin(), [spacing_mm] * 3, chest.GetDirection(),
        -1024.0, sitk.sitkFloat32,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(chest, sitk.sitkInt16), str(path))
    return path


def small_config(chest_path: Path, workdir: Path, variants: int = 5) -> dict:
    """Return the overrides of a small, fast run on `variants` synthetic variants of the chest crop.

    Snakemake merges them over config.yaml key by key; the lists given here
    replace the defaults whole. With 5 variants the demo plan makes
    v00, v01 train, v02 val and v03, v04 test.
    """
    return {
        "threads": {"preprocess": 1, "train": 1, "infer": 1},
        "demo": {
            "output_dir": str(workdir / "results" / "demo"),
            "sources": [
                {"name": "chest", "kind": "file", "path": str(chest_path), "variants": variants, "role": "synthetic"}
            ],
            "test_sources": [],
            "test_fraction": 0.3,
            "val_fraction": 0.15,
            "spacing_mm": [3.0, 3.0, 3.0],
            "crop_margin_mm": 15.0,
            "deformation": {"max_displacement_mm": 8.0, "smoothness_mm": 40.0},
        },
        "resample": {"spacing_mm": 3.0},
        "candidates": {"vessel_scales_mm": [3.0, 4.0]},
        "chunks": {"shape": [16, 16, 16]},
        "model": {"base_width": 4, "depth": 2, "attention_channels": 4},
        "training": {"epochs": 2, "checkpoint_every": 1, "batch_size": 4},
        "methods": {
            "dram": {"kind": "regression", "er": False, "ref": False, "attention": False},
            "proposed": {"kind": "regression", "er": True, "ref": True, "attention": True},
            "dcam": {"kind": "dcam", "er": False, "ref": False, "attention": False},
        },
        "evaluation": {
            "comparison": ["dcam", "dram", "dram-p", "proposed"],
            "ablation": ["dram", "proposed"],
            "bootstrap_samples": 20,
        },
        "report": {"confusion_methods": ["proposed"], "attention_method": "proposed", "attention_scans": 1},
    }


def cohort_config(base: dict, table: Path) -> dict:
    """Return `base` with the cohort read from `table` instead of the demo plan."""
    config = copy.deepcopy(base)
    config["cohort"] = {"table": str(table)}
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def default_config_with_absolute_paths(path: Path) -> Path:
    """Write config.yaml's demo sources with `../shared` paths made absolute, for runs outside the repository."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    sources = []
    for source in config["demo"]["sources"]:
        source = dict(source)
        if "path" in source and not Path(source["path"]).is_absolute():
            source["path"] = str((REPOSITORY / source["path"]).resolve())
        sources.append(source)
    return write_config(path, {"demo": {"sources": sources}})


def snakemake_command(workdir: Path, config_path: Path, *targets: str, extra=()) -> list[str]:
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--configfile", str(config_path),
        "--cores", "2",
        *extra,
        *targets,
    ]  # fmt: skip


def run_snakemake(workdir: Path, config_path: Path, *targets: str, extra=(), timeout: float = 900) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile in `workdir`; return the finished process (output as text).

    The interpreter running the tests runs Snakemake, and its folder comes
    first on PATH so that the jobs' `python -m dramseg...` use the same one.
    """
    environment = dict(os.environ)
    environment["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environment.get("PATH", "")
    return subprocess.run(
        snakemake_command(workdir, config_path, *targets, extra=extra),
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
    )


def planned_jobs(workdir: Path, config_path: Path, *targets: str, extra=()) -> list[dict]:
    """Return the jobs a dry run plans, in Snakemake's order, each as {"rule", "wildcards", "output"}.

    wildcards: dict of wildcard name -> value; output: list of paths.
    Raises AssertionError with Snakemake's output when the dry run fails.
    """
    process = run_snakemake(workdir, config_path, *targets, extra=("--dry-run", "--printshellcmds", *extra))
    text = process.stdout + process.stderr
    if process.returncode != 0:
        raise AssertionError(f"dry run failed (exit {process.returncode}):\n{text[-6000:]}")
    jobs = parse_dry_run(text)
    counted = sum(job_counts(text).values())
    if counted != len(jobs):
        raise AssertionError(
            f"the dry run's statistics count {counted} jobs but {len(jobs)} job blocks were read; "
            f"has Snakemake's dry-run layout changed?\n{text[-6000:]}"
        )
    return jobs


def parse_dry_run(text: str) -> list[dict]:
    """Read the job blocks (`rule NAME:` followed by indented fields) of a dry run's output."""
    jobs = []
    current = None
    for line in text.splitlines():
        match = _RULE_LINE.match(line)
        if match:
            current = {"rule": match["rule"], "wildcards": {}, "output": []}
            jobs.append(current)
            continue
        if current is None:
            continue
        field = _FIELD_LINE.match(line)
        if field is None:
            current = None if not line.startswith(" ") else current
            continue
        if field["key"] == "wildcards":
            current["wildcards"] = dict(item.split("=", 1) for item in field["value"].split(", "))
        elif field["key"] == "output":
            current["output"] = field["value"].split(", ")
    return jobs


def job_counts(text: str) -> dict[str, int]:
    """Read the `Job stats` table of a dry run: rule name -> number of jobs (without the total)."""
    counts = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("Job stats:"):
            in_table = True
            counts = {}
            continue
        if not in_table:
            continue
        match = _STATS_LINE.match(line)
        if match and match["rule"] != "total":
            counts[match["rule"]] = int(match["count"])
        elif match and match["rule"] == "total":
            in_table = False
    return counts


def scans_of(jobs: list[dict], rule: str) -> set[str]:
    """The `scan` wildcard values of the planned jobs of one rule."""
    return {job["wildcards"]["scan"] for job in jobs if job["rule"] == rule}


def rules_of(jobs: list[dict]) -> set[str]:
    return {job["rule"] for job in jobs}


def write_cohort_table(path: Path, demo_scans_dir: Path, splits: dict[str, str]) -> Path:
    """Write a user cohort table of demo scans already built: scan id -> split, scores from each truth.json.

    The CT, lobe map and reference columns point at the demo files (absolute paths).
    """
    header = ["scan_id", "ct", "lobes", "lobe_convention", "split", *(f"score_{lobe}" for lobe in SCORE_ORDER), "reference"]
    rows = [",".join(header)]
    for scan_id, split in splits.items():
        folder = demo_scans_dir / scan_id
        scores = json.loads((folder / "truth.json").read_text())["scores"]
        ordered = ",".join(str(scores[lobe]) for lobe in SCORE_ORDER)
        rows.append(
            f"{scan_id},{folder / 'ct.nii.gz'},{folder / 'lobes.nii.gz'},diag,{split},{ordered},{folder / 'reference.nii.gz'}"
        )
    path.write_text("\n".join(rows) + "\n")
    return path


# ---------------------------------------------------------------- shared runs
# Several test modules reuse one finished run, so each run is made once per
# pytest session and kept here. A session fixture imported into two modules
# would run once per module. A failed run is kept too, so later tests fail at
# once with the same message.

DEMO_SPLITS = {"chest_v00": "train", "chest_v01": "train", "chest_v02": "val", "chest_v03": "test", "chest_v04": "test"}
# The user cohort of the cluster run: the demo scans but the last.
COHORT_SPLITS = {scan: split for scan, split in DEMO_SPLITS.items() if scan != "chest_v04"}
COHORT_TARGETS = ("results/chunks/index.csv", "results/train/dram/model.pt")
LOCAL_CLUSTER_PROFILE = REPOSITORY / "workflow" / "profiles" / "local-cluster"

_SESSION: dict[str, object] = {}


@dataclass
class Workspace:
    """A working folder, its config overrides (as written to config_path) and the last run's process."""

    workdir: Path
    config_path: Path
    config: dict
    process: subprocess.CompletedProcess | None = None
    seconds: float = 0.0


def _once(key: str, make):
    if key not in _SESSION:
        try:
            _SESSION[key] = make()
        except BaseException as error:  # kept so that every later test reports the same failure
            _SESSION[key] = error
    value = _SESSION[key]
    if isinstance(value, BaseException):
        raise value
    return value


def _check(process: subprocess.CompletedProcess, what: str) -> None:
    if process.returncode != 0:
        raise AssertionError(f"{what} failed (exit {process.returncode}):\n{(process.stdout + process.stderr)[-8000:]}")


def demo_workspace(tmp_path_factory) -> Workspace:
    """The small demo configuration in its own working folder; nothing run yet."""

    def make():
        if not TCGA_CT.is_file():
            pytest.skip(f"real TCGA scan not found at {TCGA_CT}")
        root = tmp_path_factory.mktemp("small-demo")
        workdir = root / "work"
        workdir.mkdir()
        chest = write_chest_crop(root / "chest.nii.gz")
        config = small_config(chest, workdir)
        return Workspace(workdir, write_config(root / "small.yaml", config), config)

    return _once("demo_workspace", make)


def built_demo_scans(tmp_path_factory) -> Path:
    """Build the five demo variants (demo rules only) in the demo workspace; return their folder."""

    def make():
        space = demo_workspace(tmp_path_factory)
        targets = [f"{space.config['demo']['output_dir']}/scans/{scan}/truth.json" for scan in DEMO_SPLITS]
        _check(run_snakemake(space.workdir, space.config_path, *targets), "building the demo scans")
        return Path(space.config["demo"]["output_dir"]) / "scans"

    return _once("demo_scans", make)


def finished_demo_run(tmp_path_factory) -> Workspace:
    """Run `all` on the small demo configuration (once per session); return the workspace and its process."""

    def make():
        built_demo_scans(tmp_path_factory)
        space = demo_workspace(tmp_path_factory)
        start = time.perf_counter()
        space.process = run_snakemake(space.workdir, space.config_path)
        space.seconds = time.perf_counter() - start
        _check(space.process, "the small run of `all`")
        return space

    return _once("demo_run", make)


def local_cluster_options(profile: Path = LOCAL_CLUSTER_PROFILE) -> tuple[str, ...]:
    """Options that run jobs through the local-cluster profile from any working folder (absolute script paths)."""
    return (
        "--profile", str(profile),
        "--cluster-generic-submit-cmd",
        f"{profile / 'submit.sh'} {{name}} {{resources.mem_mb}} {{resources.runtime}} {{threads}}",
        "--cluster-generic-status-cmd", str(profile / "status.sh"),
    )  # fmt: skip


def finished_cohort_run(tmp_path_factory) -> Workspace:
    """Preprocess four demo scans listed in a user cohort table and train `dram`, through the local-cluster profile.

    The table lives beside the working folder, at a fixed path, so a test can
    add a row and dry-run without changing the cohort.table setting.
    """

    def make():
        scans = built_demo_scans(tmp_path_factory)
        base = demo_workspace(tmp_path_factory)
        root = tmp_path_factory.mktemp("small-cohort")
        workdir = root / "work"
        workdir.mkdir()
        table = write_cohort_table(root / "cohort.csv", scans, COHORT_SPLITS)
        config = cohort_config(base.config, table)
        space = Workspace(workdir, write_config(root / "cohort.yaml", config), config)
        start = time.perf_counter()
        space.process = run_snakemake(workdir, space.config_path, *COHORT_TARGETS, extra=local_cluster_options())
        space.seconds = time.perf_counter() - start
        _check(space.process, "the cohort run through the local-cluster profile")
        return space

    return _once("cohort_run", make)
