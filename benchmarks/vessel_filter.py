"""Benchmark dramseg.vessels.vesselness against skimage.filters.frangi on a real chest CT.

The RICORD scan (a DICOM series) is resampled linearly to isotropic voxels. A
rough lung mask is the largest component of air below -400 HU inside the body,
and the scan is cropped to its bounding box plus the margin that the fast
filter itself adds. Each
method then runs in its own subprocess on that same box, with the scales and
Frangi parameters of config.yaml, so that its peak memory can be read with
/proc/self/status. The script prints a markdown table with seconds, speed
ratio, peak memory and the Dice of the two vessel masks at the configured
threshold. With --update-docs it also replaces the measured part of the
"Vessel filter" section of docs/benchmarks.md (between two HTML comments).

    python benchmarks/vessel_filter.py [--threads N] [--crop N] [--update-docs]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import machine_description  # noqa: E402  (the benchmarks folder is not a package)

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DICOM = REPOSITORY.parent / "shared" / "data" / "ricord-1a-419639-000082" / "dicom"
DOCS_PAGE = REPOSITORY / "docs" / "benchmarks.md"
SECTION_TITLE = "## Vessel filter"
# The script rewrites only the text between these marks.
BEGIN_MARK = "<!-- vessel_filter.py results: begin -->"
END_MARK = "<!-- vessel_filter.py results: end -->"
DOCS_HEADER = "# Benchmarks\n\nMeasured figures of parts of the pipeline, with the command and machine behind each.\n"


def load_candidate_settings(config_path: Path) -> dict:
    import yaml

    return yaml.safe_load(config_path.read_text())["candidates"]


def resampled_ct_and_lungs(dicom_dir: Path, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Read a DICOM series, clip below -1024 HU, resample linearly to isotropic voxels and find the lungs.

    Returns (ct_zyx float32 HU, lungs_zyx bool). The lung mask is air (< -400 HU)
    not connected to the in-plane border, whose largest connected component is kept.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom_dir)))
    ct = sitk.Maximum(sitk.Cast(reader.Execute(), sitk.sitkFloat32), -1024.0)
    size = [int(round(count * spacing / spacing_mm)) for count, spacing in zip(ct.GetSize(), ct.GetSpacing())]
    resampled = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), (spacing_mm,) * 3,
                              ct.GetDirection(), -1024.0, sitk.sitkFloat32)
    ct_zyx = sitk.GetArrayFromImage(resampled)

    air = ct_zyx < -400
    labels, _ = ndimage.label(air)
    # The trachea leaves through the top slice, so only the in-plane border counts as outside.
    outside = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                        labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    inside = air & ~np.isin(labels, outside)
    labels, count = ndimage.label(inside)
    if count == 0:
        raise SystemExit(f"no air inside the body found in {dicom_dir}")
    sizes = ndimage.sum(inside, labels, range(1, count + 1))
    lungs_zyx = labels == int(np.argmax(sizes)) + 1
    return ct_zyx, lungs_zyx


def run_worker(method: str, folder: Path, name: str, settings: dict, spacing_mm: float, threads: int) -> dict:
    """Run one method in a fresh interpreter; return its seconds, CPU seconds and peak memory."""
    command = [sys.executable, __file__, "--worker", method, "--folder", str(folder), "--name", name,
               "--worker-settings", json.dumps(settings), "--spacing", str(spacing_mm), "--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"the {method} worker failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def memory_kib(field: str) -> int:
    """Return a memory figure of this process from /proc/self/status (VmRSS now, VmHWM peak), in KiB."""
    # VmHWM belongs to the process image, unlike ru_maxrss, which on Linux keeps the
    # peak of the parent that forked this worker.
    found = re.search(rf"^{field}:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(found.group(1))


def worker(method: str, folder: Path, name: str, settings: dict, spacing_mm: float, threads: int) -> None:
    image_zyx = np.load(folder / f"{name}.npy")
    mask_path = folder / f"{name}-mask.npy"
    mask_zyx = np.load(mask_path) if mask_path.exists() else None
    scales_mm = settings["vessel_scales_mm"]
    alpha, beta, gamma = settings["frangi_alpha"], settings["frangi_beta"], settings["frangi_gamma"]
    if method == "fast":
        sys.path.insert(0, str(REPOSITORY / "workflow"))
        from dramseg import vessels
    else:
        from skimage.filters import frangi
    baseline_kib = memory_kib("VmRSS")
    start_cpu = time.process_time()
    start = time.perf_counter()
    if method == "skimage":
        response = frangi(image_zyx, sigmas=[scale / spacing_mm for scale in scales_mm], alpha=alpha, beta=beta,
                          gamma=gamma, black_ridges=False)
    else:
        response = vessels.vesselness(image_zyx, (spacing_mm,) * 3, scales_mm, alpha, beta, gamma, mask_zyx=mask_zyx,
                                      threads=threads)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - start_cpu
    peak_kib = memory_kib("VmHWM")
    np.save(folder / f"{name}-{method}.npy", response.astype(np.float32))
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak_kib / 1024,
                      "added_mib": (peak_kib - baseline_kib) / 1024}))


def dice(first: np.ndarray, second: np.ndarray) -> float:
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(first, second).sum()) / total


def compare(name: str, image_zyx: np.ndarray, mask_zyx: np.ndarray, settings: dict, spacing_mm: float,
            threads: int, folder: Path) -> list[str]:
    """Run both methods on one image; the fast one gets the mask. Return markdown table rows.

    The Dice and the correlation of the two responses are computed inside the mask.
    """
    np.save(folder / f"{name}.npy", np.ascontiguousarray(image_zyx, dtype=np.float32))
    np.save(folder / f"{name}-mask.npy", mask_zyx)
    results, responses = {}, {}
    for method in ("skimage", "fast"):
        print(f"{name}: running {method} on {image_zyx.shape}", file=sys.stderr)
        results[method] = run_worker(method, folder, name, settings, spacing_mm, threads)
        responses[method] = np.load(folder / f"{name}-{method}.npy")[mask_zyx]
    threshold = settings["vessel_threshold"]
    overlap = dice(responses["skimage"] > threshold, responses["fast"] > threshold)
    correlation = float(np.corrcoef(responses["skimage"], responses["fast"])[0, 1])
    ratio = results["skimage"]["seconds"] / results["fast"]["seconds"]
    shape = "×".join(str(size) for size in image_zyx.shape)
    rows = []
    for method, label in (("skimage", "skimage.filters.frangi"), ("fast", f"dramseg.vessels, {threads} threads")):
        result = results[method]
        cells = [f"{name} ({shape})", label, f"{result['seconds']:.1f}", f"{result['cpu_seconds']:.1f}",
                 f"{result['peak_mib']:.0f} ({result['added_mib']:+.0f})"]
        cells += [f"{ratio:.1f}×", f"{overlap:.4f}", f"{correlation:.4f}"] if method == "fast" else ["", "", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def fast_only(name: str, image_zyx: np.ndarray, settings: dict, spacing_mm: float, threads: int,
              folder: Path) -> str:
    """Run the fast method on a whole image without a mask; return a markdown table row."""
    np.save(folder / f"{name}.npy", np.ascontiguousarray(image_zyx, dtype=np.float32))
    print(f"{name}: running fast on {image_zyx.shape}", file=sys.stderr)
    result = run_worker("fast", folder, name, settings, spacing_mm, threads)
    shape = "×".join(str(size) for size in image_zyx.shape)
    return (f"| {name} ({shape}), no mask | dramseg.vessels, {threads} threads | {result['seconds']:.1f} | "
            f"{result['cpu_seconds']:.1f} | {result['peak_mib']:.0f} ({result['added_mib']:+.0f}) | | | |")


def update_docs(measurement: str) -> None:
    """Replace the measured part of the Vessel filter section, keeping the text around it."""
    block = f"{BEGIN_MARK}\n{measurement.rstrip()}\n{END_MARK}"
    text = DOCS_PAGE.read_text() if DOCS_PAGE.exists() else DOCS_HEADER
    pattern = re.compile(rf"{re.escape(BEGIN_MARK)}.*?{re.escape(END_MARK)}", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION_TITLE}\n\n{block}\n"
    DOCS_PAGE.write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom", type=Path, default=DEFAULT_DICOM, help="DICOM series folder of the test scan")
    parser.add_argument("--config", type=Path, default=REPOSITORY / "config.yaml", help="config with a candidates section")
    parser.add_argument("--spacing", type=float, default=1.4, help="isotropic voxel size of the resampled scan, mm")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads of the fast filter")
    parser.add_argument("--crop", type=int, default=0, help="also compare on a central cube of this edge length, voxels")
    parser.add_argument("--update-docs", action="store_true",
                        help="replace the measured part of the Vessel filter section of docs/benchmarks.md")
    parser.add_argument("--worker", choices=("skimage", "fast"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--worker-settings", type=json.loads, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)

    if arguments.worker:
        worker(arguments.worker, arguments.folder, arguments.name, arguments.worker_settings, arguments.spacing,
               arguments.threads)
        return

    if not arguments.dicom.is_dir():
        raise SystemExit(f"DICOM folder {arguments.dicom} not found; pass --dicom")
    settings = load_candidate_settings(arguments.config)
    machine = machine_description()
    ct_zyx, lungs_zyx = resampled_ct_and_lungs(arguments.dicom, arguments.spacing)
    sys.path.insert(0, str(REPOSITORY / "workflow"))
    from dramseg import vessels

    # The same box the fast filter crops to when given the lung mask.
    largest_sigma = max(settings["vessel_scales_mm"]) / arguments.spacing
    box = vessels.mask_box(lungs_zyx, [math.ceil(vessels.MARGIN_SIGMAS * largest_sigma)] * 3)
    box_zyx = ct_zyx[box]

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        rows += compare("lung box", box_zyx, lungs_zyx[box], settings, arguments.spacing, arguments.threads,
                        Path(folder))
        if arguments.crop:
            # A cube at the centre of the lung box, with the real image around it as context.
            context = max(len(vessels.gaussian_kernels(scale / arguments.spacing)[0]) // 2
                          for scale in settings["vessel_scales_mm"])
            start = [size // 2 - arguments.crop // 2 - context for size in box_zyx.shape]
            cube = tuple(slice(max(first, 0), first + arguments.crop + 2 * context) for first in start)
            cube_mask = np.zeros(box_zyx[cube].shape, bool)
            cube_mask[context:-context, context:-context, context:-context] = True
            rows += compare(f"central {arguments.crop}³ cube", box_zyx[cube], cube_mask, settings,
                            arguments.spacing, arguments.threads, Path(folder))
        rows.append(fast_only("whole scan", ct_zyx, settings, arguments.spacing, arguments.threads, Path(folder)))

    command = "python benchmarks/vessel_filter.py" + "".join(
        f" {arg}" for arg in (argv if argv is not None else sys.argv[1:])
    )
    section = "\n".join([
        f"Command: `{command}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Machine: {machine}  ",
        f"Input: RICORD 419639-000082 resampled to {arguments.spacing} mm; scales {settings['vessel_scales_mm']} mm, "
        f"alpha {settings['frangi_alpha']}, beta {settings['frangi_beta']}, gamma {settings['frangi_gamma']}; "
        f"Dice of the masks at vesselness > {settings['vessel_threshold']} and correlation of the responses "
        "inside the lung mask (box) or the central cube (cube, filtered with real image around it). "
        "Peak memory is the process's VmHWM, with the increase over the resident size before filtering.",
        "",
        "| input (z×y×x voxels) | method | seconds | CPU seconds | peak memory, MiB (added by the filter) "
        "| speed ratio | Dice | correlation |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])
    print(section)
    if arguments.update_docs:
        update_docs(section)


if __name__ == "__main__":
    main()
