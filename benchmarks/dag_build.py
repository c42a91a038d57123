"""Time Snakemake's dry run (parsing and DAG building) of `all` for large cohort tables.

For each cohort size the script writes a cohort table and a config with that
table and the default settings of config.yaml (all ten methods). Every row
points at one tiny NIfTI CT and lobe map (16³ voxels), which a dry run only
checks for existence. Of the scans, 70 % are train, 15 % val and 15 % test,
all with scores. The script then
runs `python -m snakemake --dry-run --quiet rules` on the repository's Snakefile in
an empty working folder, which builds the whole DAG (every job of every
rule, with the file checks of an ordinary start) and prints only the job
counts, and reports the wall seconds and the number of jobs.

With --profile-top N the largest size runs again under cProfile and the N
functions with the most cumulative time are printed.

    python benchmarks/dag_build.py [--scans 100 1000] [--profile-top 25] [--keep DIR] [--update-docs]
"""

from __future__ import annotations

import argparse
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

import reporting
from reporting import REPOSITORY

SECTION_TITLE = "DAG building"
SCRIPT_NAME = "dag_build.py"
TARGET_SECONDS = 60.0
INTRO = (
    "Seconds from starting `snakemake --dry-run` on a cohort table to the printed job counts: parsing the "
    "workflow, reading and checking the table, and building the DAG of `all` with the default settings (ten "
    "methods). Target: under 60 s for 1,000 scans on 2 cores."
)


def write_tiny_scan(folder: Path) -> tuple[Path, Path]:
    """Write a 16³ CT (int16 HU, 2 mm spacing) and a lobe map with labels 1 and 3; return their paths."""
    ct_zyx = np.full((16, 16, 16), -800, dtype=np.int16)
    lobes_zyx = np.zeros((16, 16, 16), dtype=np.uint8)
    lobes_zyx[2:14, 2:14, 2:8] = 1
    lobes_zyx[2:14, 2:14, 8:14] = 3
    ct = sitk.GetImageFromArray(ct_zyx)
    lobes = sitk.GetImageFromArray(lobes_zyx)
    for image in (ct, lobes):
        image.SetSpacing((2.0, 2.0, 2.0))
    ct_path, lobes_path = folder / "ct.nii.gz", folder / "lobes.nii.gz"
    sitk.WriteImage(ct, str(ct_path))
    sitk.WriteImage(lobes, str(lobes_path))
    return ct_path, lobes_path


def write_cohort(path: Path, scans: int, ct: Path, lobes: Path) -> Path:
    """Write a cohort table of `scans` rows, all with the same files: 70 % train, 15 % val, the rest test."""
    lines = ["scan_id,ct,lobes,split,score_lul,score_lll,score_rul,score_rml,score_rll"]
    train, val = int(0.7 * scans), int(0.15 * scans)
    for index in range(scans):
        if index < train:
            split = "train"
        elif index < train + val:
            split = "val"
        else:
            split = "test"
        scores = ",".join(str((index + lobe) % 6) for lobe in range(5))
        lines.append(f"scan{index:05d},{ct},{lobes},{split},{scores}")
    path.write_text("\n".join(lines) + "\n")
    return path


def dry_run_command(workdir: Path, config: Path) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPOSITORY / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(config), "--cores", "2", "--dry-run", "--quiet", "rules",
    ]  # fmt: skip


def time_dry_run(folder: Path, scans: int, ct: Path, lobes: Path) -> dict:
    """Run the dry run for a cohort of `scans` scans; return seconds and job count."""
    table = write_cohort(folder / f"cohort-{scans}.csv", scans, ct, lobes)
    config = folder / f"config-{scans}.yaml"
    config.write_text(yaml.safe_dump({"cohort": {"table": str(table)}}))
    workdir = folder / f"work-{scans}"
    workdir.mkdir(exist_ok=True)
    started = time.perf_counter()
    process = subprocess.run(dry_run_command(workdir, config), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"dry run of {scans} scans failed:\n{(process.stdout + process.stderr)[-4000:]}")
    total = re.search(r"^total\s+(\d+)\s*$", process.stdout + process.stderr, re.MULTILINE)
    return {"scans": scans, "seconds": seconds, "jobs": int(total.group(1)) if total else 0, "config": config, "workdir": workdir}


def profile_dry_run(run: dict, folder: Path, top: int) -> str:
    """Run one dry run again under cProfile; return the `top` functions by cumulative time."""
    stats_path = folder / "dry-run.prof"
    command = dry_run_command(run["workdir"], run["config"])
    command[1:3] = ["-m", "cProfile", "-o", str(stats_path), "-m", "snakemake"]
    subprocess.run(command, capture_output=True, text=True, check=True)
    report = folder / "dry-run-profile.txt"
    with open(report, "w") as stream:
        pstats.Stats(str(stats_path), stream=stream).sort_stats("cumulative").print_stats(top)
    return report.read_text()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, nargs="+", default=[100, 1000], help="cohort sizes to time")
    parser.add_argument("--profile-top", type=int, default=0, help="profile the largest size; print this many functions")
    parser.add_argument("--keep", type=Path, help="folder for the tables and work folders (default: a temporary one)")
    parser.add_argument("--update-docs", action="store_true", help="write the results into docs/benchmarks.md")
    arguments = parser.parse_args(argv)

    header = reporting.header_lines(reporting.command_line())
    with tempfile.TemporaryDirectory() as temporary:
        folder = arguments.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        ct, lobes = write_tiny_scan(folder)
        runs = [time_dry_run(folder, scans, ct, lobes) for scans in arguments.scans]
        rows = [[run["scans"], run["jobs"], f"{run['seconds']:.1f}", f"{1000 * run['seconds'] / run['jobs']:.1f}"] for run in runs]
        table = reporting.markdown_table(["scans", "jobs", "seconds", "ms per job"], rows)
        block = "\n".join(header + [""] + table) + "\n"
        print(block)
        largest = max(runs, key=lambda run: run["scans"])
        verdict = "within" if largest["seconds"] <= TARGET_SECONDS else "over"
        print(f"{largest['scans']} scans: {largest['seconds']:.1f} s, {verdict} the {TARGET_SECONDS:.0f} s target")
        if arguments.profile_top:
            print(profile_dry_run(largest, folder, arguments.profile_top))
    if arguments.update_docs:
        reporting.update_docs_section(SECTION_TITLE, SCRIPT_NAME, block, INTRO)


if __name__ == "__main__":
    main()
