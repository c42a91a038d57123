"""Time the preprocessing stages of one scan, stage by stage, as the rules run them.

For the RICORD scan (a 512×512×255 DICOM series) the script writes a
record.json with split "test" and score 2 in every lobe (so that calibration
runs) and then runs, each in its own `python -m dramseg.<stage>` process with
the settings of config.yaml: lobes, resample, candidates, chunks calibrate and
chunks write, at the default chunk size and again at the paper's 80³. Each
process runs under /usr/bin/time -v, which gives its wall seconds, CPU
seconds and peak resident memory.

The reference in the same run is pure I/O: a process that only reads the
DICOM series (dramseg.readers.read_ct). The table gives the ratio of the
whole preprocessing to it and to the 20 s target.

With --scaling, the two other demo anatomies (the Lung_Dx demo scan and the
TCGA whole-body CT at 2 mm, with the demo builder's lobe maps) run too, and
docs/images/preprocess_scaling.png plots seconds per stage against the scan's
voxel count.

The RICORD lobe map is the demo builder's approximate one,
results/demo/sources/ricord/lobes.nii.gz; when it is missing the script
builds it in its work folder with `python -m dramseg.demo.build source`.

    python benchmarks/preprocess.py [--threads 2] [--scaling] [--keep DIR] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import reporting
from reporting import REPOSITORY, RICORD_DICOM

SECTION_TITLE = "Preprocessing"
SCRIPT_NAME = "preprocess.py"
TARGET_SECONDS = 20.0
TARGET_PEAK_MIB = 4096.0
LOBE_NAMES = ("lul", "lll", "rul", "rll", "rml")
STAGES = ("lobes", "resample", "candidates", "calibrate", "write")
SCALING_PICTURE = REPOSITORY / "docs" / "images" / "preprocess_scaling.png"


def settings_json(config: dict, *sections: str) -> str:
    return json.dumps({section: config[section] for section in sections})


def write_record(folder: Path, scan_id: str, ct: Path, lobes: Path) -> Path:
    """Write a test-split record.json with score 2 in every lobe; return its path."""
    record = {
        "scan_id": scan_id, "split": "test", "ct": str(ct), "lobes": str(lobes), "lobe_convention": "diag",
        "scores": {name: 2 for name in LOBE_NAMES}, "corads": None, "reference": None, "dicom_series": None,
        "source": None,
    }
    path = folder / "record.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def stage_commands(record: Path, folder: Path, config: dict, threads: int, scan_id: str) -> dict[str, list[str]]:
    """Return the command of each preprocessing stage, with the arguments its rule passes."""
    python = [sys.executable, "-m"]
    chunk_settings = settings_json(config, "chunks")
    return {
        "lobes": python + ["dramseg.lobes", "--record", str(record), "--out-lobes", str(folder / "lobes.nii.gz"),
                           "--out-qc", str(folder / "qc.json"),
                           "--settings", settings_json(config, "cohort", "lobes", "resample")],
        "resample": python + ["dramseg.resample", "--record", str(record), "--lobes", str(folder / "lobes.nii.gz"),
                              "--out-ct", str(folder / "resampled-ct.nii.gz"),
                              "--out-lobes", str(folder / "resampled-lobes.nii.gz"),
                              "--out-box", str(folder / "box.json"), "--settings", settings_json(config, "resample")],
        "candidates": python + ["dramseg.candidates", "--ct", str(folder / "resampled-ct.nii.gz"),
                                "--lobes", str(folder / "resampled-lobes.nii.gz"),
                                "--out-candidates", str(folder / "candidates.nii.gz"),
                                "--out-vessels", str(folder / "vessels.nii.gz"),
                                "--out-table", str(folder / "candidates.csv"), "--scan-id", scan_id,
                                "--threads", str(threads), "--settings", settings_json(config, "candidates")],
        "calibrate": python + ["dramseg.chunks", "calibrate", "--record", str(record),
                               "--candidates-table", str(folder / "candidates.csv"),
                               "--out", str(folder / "intervals.csv"), "--settings", chunk_settings],
        "write": python + ["dramseg.chunks", "write", "--record", str(record),
                           "--ct", str(folder / "resampled-ct.nii.gz"), "--lobes", str(folder / "resampled-lobes.nii.gz"),
                           "--candidates", str(folder / "candidates.nii.gz"), "--vessels", str(folder / "vessels.nii.gz"),
                           "--intervals", str(folder / "intervals.csv"), "--out", str(folder / "chunks.h5"),
                           "--settings", chunk_settings],
    }


def chunk_store_command(folder: Path, config: dict, shape: list[int], out: Path) -> list[str]:
    """Return the chunks write command of a prepared scan folder at another chunk shape."""
    paper = dict(config, chunks=dict(config["chunks"], shape=list(shape)))
    command = stage_commands(folder / "record.json", folder, paper, 1, "")["write"]
    command[command.index("--out") + 1] = str(out)
    return command


def preprocess_scan(scan_id: str, ct: Path, lobes: Path, folder: Path, config: dict, threads: int) -> dict[str, dict]:
    """Run every preprocessing stage of one scan in `folder`; return the measurement of each."""
    folder.mkdir(parents=True, exist_ok=True)
    record = write_record(folder, scan_id, ct, lobes)
    measured = {}
    for stage, command in stage_commands(record, folder, config, threads, scan_id).items():
        measured[stage] = reporting.run_measured(command, folder / f"{stage}.log", threads)
        print(f"{scan_id} {stage}: {measured[stage]['seconds']:.1f} s, {measured[stage]['peak_mib']:.0f} MiB",
              file=sys.stderr)
    return measured


def read_only(scan_id: str, ct: Path, folder: Path, threads: int) -> dict:
    """Measure a process that only reads the CT with dramseg.readers.read_ct (the I/O reference)."""
    code = ("import sys; from dramseg.readers import read_ct; "
            "image = read_ct(sys.argv[1], sys.argv[2]); print(image.GetSize())")
    return reporting.run_measured([sys.executable, "-c", code, str(ct), scan_id], folder / "read.log", threads)


def import_only(folder: Path, threads: int) -> dict:
    """Measure a process that starts Python and imports the stage modules, the fixed cost of each stage process."""
    code = "import dramseg.lobes, dramseg.resample, dramseg.candidates, dramseg.chunks"
    return reporting.run_measured([sys.executable, "-c", code], folder / "import.log", threads)


def ricord_lobes(folder: Path, config: dict, threads: int) -> Path:
    """Return the demo builder's RICORD lobe map: the pipeline's when present, else one built in `folder`."""
    existing = REPOSITORY / "results" / "demo" / "sources" / "ricord" / "lobes.nii.gz"
    if existing.exists():
        return existing
    out = folder / "ricord-source"
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "dramseg.demo.build", "source", "--source", "ricord", "--input", str(RICORD_DICOM),
               "--out-ct", str(out / "ct.nii.gz"), "--out-lungs", str(out / "lungs.nii.gz"),
               "--out-lobes", str(out / "lobes.nii.gz"), "--out-picture", str(out / "coronal.png"),
               "--settings", settings_json(config, "demo", "chunks")]
    reporting.run_measured(command, out / "build.log", threads, cwd=REPOSITORY)
    return out / "lobes.nii.gz"


def image_size(path: Path) -> tuple[int, int, int]:
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        names = reader.GetGDCMSeriesFileNames(str(path))
        single = sitk.ImageFileReader()
        single.SetFileName(names[0])
        single.ReadImageInformation()
        return single.GetSize()[0], single.GetSize()[1], len(names)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize())


def scaling_scans() -> list[tuple[str, Path, Path]]:
    """Return (name, CT, lobe map) of the two other demo anatomies that the demo run has built."""
    demo = REPOSITORY / "results" / "demo"
    candidates = [
        ("Lung_Dx demo scan", demo / "scans" / "lungdx_v00" / "ct.nii.gz", demo / "scans" / "lungdx_v00" / "lobes.nii.gz"),
        ("TCGA whole body, 2 mm", REPOSITORY.parent / "shared" / "data" / "tcga-de-a4ma" / "ct-2mm.nii.gz",
         demo / "sources" / "tcga" / "lobes.nii.gz"),
    ]
    return [(name, ct, lobes) for name, ct, lobes in candidates if ct.exists() and lobes.exists()]


def plot_scaling(points: list[dict], path: Path) -> None:
    """Plot stacked bars of seconds per stage against the CT's voxel count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda point: point["voxels"])
    figure, axes = plt.subplots(figsize=(7, 4.2))
    positions = list(range(len(points)))
    bottom = [0.0] * len(points)
    for stage in STAGES:
        heights = [point["stages"][stage]["seconds"] for point in points]
        axes.bar(positions, heights, bottom=bottom, label=stage, width=0.6)
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes.plot(positions, [point["read"]["seconds"] for point in points], "k^--", label="reading the CT only")
    axes.axhline(TARGET_SECONDS, color="grey", linestyle=":", label=f"target {TARGET_SECONDS:.0f} s")
    axes.set_xticks(positions, [f"{point['name']}\n{point['voxels'] / 1e6:.1f} M voxels" for point in points])
    axes.set_ylabel("seconds (wall clock)")
    axes.set_title("Preprocessing one scan, per stage")
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads of the candidates stage and math libraries")
    parser.add_argument("--scaling", action="store_true", help="also run two other scans and plot seconds against size")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--update-docs", action="store_true", help="replace the results block in docs/benchmarks.md")
    arguments = parser.parse_args(argv)

    if not RICORD_DICOM.exists():
        raise SystemExit(f"the RICORD DICOM series (MIDRC-RICORD-1A patient 419639-000082, 255 slices) is missing "
                         f"at {RICORD_DICOM}; place it there to run this benchmark")
    config = reporting.load_config()
    header = reporting.header_lines(reporting.command_line())
    work = arguments.keep or Path(tempfile.mkdtemp(prefix="preprocess-benchmark-"))
    try:
        lines, points = measure(work, config, arguments)
    finally:
        if arguments.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if arguments.scaling:
        plot_scaling(points, SCALING_PICTURE)
        lines += ["", f"![seconds per stage against scan size](images/{SCALING_PICTURE.name})"]
    lines += ["", f"Load average at the end: {reporting.load_average():.1f}."]
    block = "\n".join(header + [""] + lines)
    print(block)
    if arguments.update_docs:
        reporting.update_docs_section(SECTION_TITLE, SCRIPT_NAME, block)


def measure(work: Path, config: dict, arguments) -> tuple[list[str], list[dict]]:
    threads = arguments.threads
    lobes = ricord_lobes(work, config, threads)
    folder = work / "ricord"
    stages = preprocess_scan("ricord", RICORD_DICOM, lobes, folder, config, threads)
    read = read_only("ricord", RICORD_DICOM, folder, threads)
    imports = import_only(folder, threads)
    paper_write = reporting.run_measured(chunk_store_command(folder, config, [80, 80, 80], folder / "chunks-80.h5"),
                                         folder / "write-80.log", threads)
    size = image_size(RICORD_DICOM)
    points = [{"name": "RICORD", "voxels": size[0] * size[1] * size[2], "stages": stages, "read": read}]

    total = sum(stage["seconds"] for stage in stages.values())
    cpu = sum(stage["cpu_seconds"] for stage in stages.values())
    peak = max(stage["peak_mib"] for stage in stages.values())
    shape = "×".join(str(v) for v in config["chunks"]["shape"])
    rows = [[stage if stage not in ("calibrate", "write") else f"chunks {stage}", f"{m['seconds']:.1f}",
             f"{m['cpu_seconds']:.1f}", f"{m['peak_mib']:.0f}", f"{m['seconds'] / read['seconds']:.1f}×"]
            for stage, m in stages.items()]
    rows.append([f"**all five stages** ({shape} chunks)", f"**{total:.1f}**", f"{cpu:.1f}", f"**{peak:.0f}**",
                 f"**{total / read['seconds']:.1f}×**"])
    rows.append(["chunks write at 80×80×80 (paper)", f"{paper_write['seconds']:.1f}", f"{paper_write['cpu_seconds']:.1f}",
                 f"{paper_write['peak_mib']:.0f}", f"{paper_write['seconds'] / read['seconds']:.1f}×"])
    rows.append(["reference: read the DICOM series only", f"{read['seconds']:.1f}", f"{read['cpu_seconds']:.1f}",
                 f"{read['peak_mib']:.0f}", "1.0×"])
    rows.append(["start Python and import the stage modules", f"{imports['seconds']:.1f}",
                 f"{imports['cpu_seconds']:.1f}", f"{imports['peak_mib']:.0f}", f"{imports['seconds'] / read['seconds']:.1f}×"])
    lines = [f"Input: RICORD 419639-000082, {size[0]}×{size[1]}×{size[2]} voxels (DICOM, 0.70×0.70×1.25 mm), "
             f"lobes {lobes.relative_to(REPOSITORY) if lobes.is_relative_to(REPOSITORY) else 'built by dramseg.demo.build'}; "
             f"settings of config.yaml, candidates with --threads {threads}; each stage is its own process "
             "(`python -m dramseg.<stage>`), measured with /usr/bin/time -v.", ""]
    lines += reporting.markdown_table(
        ["stage", "seconds", "CPU seconds", "peak memory, MiB", "ratio to reading the CT"], rows)
    lines += ["",
              f"Whole preprocessing: {total:.1f} s against the target of {TARGET_SECONDS:.0f} s "
              f"(ratio {total / TARGET_SECONDS:.2f}), peak {peak / 1024:.2f} GiB against {TARGET_PEAK_MIB / 1024:.0f} GiB "
              f"(ratio {peak / TARGET_PEAK_MIB:.2f}); {total / read['seconds']:.1f} times the time to read the series. "
              f"Each stage process pays about {imports['seconds']:.1f} s of interpreter start and imports."]

    if arguments.scaling:
        scaling_rows = []
        for name, ct, scan_lobes in scaling_scans():
            scan_id = ct.parent.name if ct.parent.name.startswith("lungdx") else "tcga"
            scan_folder = work / scan_id
            measured = preprocess_scan(scan_id, ct, scan_lobes, scan_folder, config, threads)
            size = image_size(ct)
            points.append({"name": name.split(",")[0], "voxels": size[0] * size[1] * size[2], "stages": measured,
                           "read": read_only(scan_id, ct, scan_folder, threads)})
        for point in sorted(points, key=lambda p: p["voxels"]):
            seconds = [point["stages"][stage]["seconds"] for stage in STAGES]
            scaling_rows.append([point["name"], f"{point['voxels'] / 1e6:.1f}"] + [f"{s:.1f}" for s in seconds]
                                + [f"{sum(seconds):.1f}", f"{max(m['peak_mib'] for m in point['stages'].values()):.0f}",
                                   f"{point['read']['seconds']:.1f}"])
        lines += ["", "Seconds per stage against scan size. Lung_Dx is the demo scan results/demo/scans/lungdx_v00 "
                  "(340×274×124 at 1×1×2.5 mm). TCGA is the TCGA-DE-A4MA whole-body CT at 2 mm (250×250×336), with "
                  "the demo lobe map results/demo/sources/tcga/lobes.nii.gz, which the lobes stage resamples onto it.",
                  ""]
        lines += reporting.markdown_table(
            ["scan", "CT voxels (M)"] + list(STAGES) + ["total", "peak MiB", "read only"], scaling_rows)
    return lines, points


if __name__ == "__main__":
    main()
