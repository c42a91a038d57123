"""Time scan-level inference (dramseg.infer) at the default and the paper's chunk size and width.

A randomly initialised network of the full method (regression with
attention; ER and REF change only training) is saved as a model.pt with the
metadata train.py writes, so that `python -m dramseg.infer scan` accepts it.
The scan is RICORD (512×512×255), preprocessed by the stages of
benchmarks/preprocess.py: its 32³ store at the default settings and an 80³
store for the paper's settings.

Measured on the CPU with torch limited to --threads threads:

- the forward pass of the scan's 5 lobe chunks as one batch under
  torch.inference_mode, as infer.predict_chunks runs it, with the
  contiguous and the channels_last_3d memory format;
- the reference in the same run: the same forward one lobe at a time with
  autograd on (a plain `model(chunk)` loop); the ratio is reference seconds
  over batched seconds;
- the whole `python -m dramseg.infer scan` command (store reading, forward,
  tiling, resampling to the CT grid, writing), under /usr/bin/time -v.

    python benchmarks/inference.py [--threads 2] [--prepared DIR] [--repeats 2] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import reporting
from reporting import REPOSITORY, RICORD_DICOM, WORKFLOW

sys.path.insert(0, str(WORKFLOW))

SECTION_TITLE = "Inference"
SCRIPT_NAME = "inference.py"
PAPER_TARGET_SECONDS = 15.0
LOOSE_TARGET_SECONDS = 30.0


def sizes(config: dict) -> dict[str, dict]:
    """Return the two settings compared: config.yaml's and the chunk shape and width of Xie et al. (80³, 32)."""
    paper_model = dict(config["model"], base_width=32, depth=3)
    return {
        "default": {"chunks": dict(config["chunks"]), "model": dict(config["model"])},
        "paper": {"chunks": dict(config["chunks"], shape=[80, 80, 80]), "model": paper_model},
    }


def save_random_model(path: Path, config: dict, size: dict, method: str = "proposed") -> None:
    """Save a randomly initialised network of `method` as a model.pt that dramseg.infer loads."""
    import torch

    from dramseg.models import build_model
    from dramseg.train import model_metadata

    settings = {"method": config["methods"][method], "model": size["model"], "chunks": size["chunks"],
                "resample": config["resample"]}
    torch.manual_seed(0)
    model = build_model(settings["method"]["kind"], size["model"], attention=settings["method"]["attention"])
    payload = model_metadata(method, settings)
    payload.update({"state_dict": model.state_dict(), "epoch": 0, "val_loss": float("nan"), "settings_hash": "benchmark"})
    torch.save(payload, path)


def fastest_seconds(function, repeats: int) -> tuple[float, float]:
    """Run `function` once to warm up, then `repeats` times; return the fastest wall and CPU seconds."""
    function()
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(wall), min(cpu)


def forward_timings(model_path: Path, store: Path, config: dict, size: dict, repeats: int) -> dict:
    """Return (wall, CPU) seconds of the batched forward (both memory formats) and of the one-lobe-at-a-time reference."""
    import torch

    from dramseg import infer

    settings = {"chunks": size["chunks"], "model": size["model"], "resample": config["resample"]}
    device = torch.device("cpu")
    model, metadata = infer.load_model(str(model_path), settings, device)
    chunks, _ = infer.read_store(str(store), "ricord")
    kind = metadata["kind"]

    def batched(channels_last: bool):
        return lambda: infer.predict_chunks(model, kind, chunks, device, 5, False, channels_last)

    def one_at_a_time():
        for chunk in chunks:
            model(torch.from_numpy(chunk.image[None, None]))["probabilities"].detach().numpy()

    return {
        "lobes": len(chunks),
        "batched": fastest_seconds(batched(False), repeats),
        "channels_last": fastest_seconds(batched(True), repeats),
        "reference": fastest_seconds(one_at_a_time, repeats),
    }


def infer_command(folder: Path, model_path: Path, store: Path, out: Path, config: dict, size: dict, threads: int) -> list[str]:
    """Return the infer_scan rule's command for a prepared scan folder."""
    settings = {"device": "cpu", "allow_cpu_fallback": False, "inference": config["inference"],
                "chunks": size["chunks"], "resample": config["resample"], "model": size["model"]}
    out.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "dramseg.infer", "scan", "--method", "proposed", "--model", str(model_path),
            "--record", str(folder / "record.json"), "--lobes", str(folder / "lobes.nii.gz"), "--store", str(store),
            "--box", str(folder / "box.json"), "--resampled-lobes", str(folder / "resampled-lobes.nii.gz"),
            "--out-probability", str(out / "probability.nii.gz"), "--out-lesion", str(out / "lesion.nii.gz"),
            "--out-table", str(out / "lobes.csv"), "--out-severity", str(out / "severity.json"),
            "--threads", str(threads), "--settings", json.dumps(settings)]


def logged_seconds(log_path: Path) -> float | None:
    """Return the seconds to the end of prediction and tiling that infer.py logs, or None."""
    found = re.search(r"predicted and tiled in ([\d.]+) s", log_path.read_text())
    return float(found.group(1)) if found else None


def prepare(work: Path, config: dict, threads: int) -> Path:
    """Preprocess RICORD into `work` with the stages of preprocess.py, plus an 80³ store."""
    import preprocess

    folder = work / "ricord"
    lobes = preprocess.ricord_lobes(work, config, threads)
    preprocess.preprocess_scan("ricord", RICORD_DICOM, lobes, folder, config, threads)
    reporting.run_measured(preprocess.chunk_store_command(folder, config, [80, 80, 80], folder / "chunks-80.h5"),
                           folder / "write-80.log", threads)
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="a scan folder kept by preprocess.py --keep DIR (DIR/ricord); default: preprocess here")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of each forward variant after a warm-up")
    parser.add_argument("--update-docs", action="store_true", help="replace the results block in docs/benchmarks.md")
    arguments = parser.parse_args(argv)

    import torch

    torch.set_num_threads(arguments.threads)
    config = reporting.load_config()
    header = reporting.header_lines(reporting.command_line())
    work = Path(tempfile.mkdtemp(prefix="inference-benchmark-"))
    try:
        folder = arguments.prepared or prepare(work, config, arguments.threads)
        lines = measure(folder, work, config, arguments)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines += ["", f"Load average at the end: {reporting.load_average():.1f}."]
    block = "\n".join(header + [""] + lines)
    print(block)
    if arguments.update_docs:
        reporting.update_docs_section(SECTION_TITLE, SCRIPT_NAME, block)


def measure(folder: Path, work: Path, config: dict, arguments) -> list[str]:
    import torch

    rows = []
    commands = {}
    for name, size in sizes(config).items():
        shape = size["chunks"]["shape"]
        store = folder / ("chunks.h5" if shape == list(config["chunks"]["shape"]) else f"chunks-{shape[0]}.h5")
        model_path = work / f"{name}.pt"
        save_random_model(model_path, config, size)
        forward = forward_timings(model_path, store, config, size, arguments.repeats)
        log_path = work / f"infer-{name}.log"
        command = reporting.run_measured(
            infer_command(folder, model_path, store, work / f"infer-{name}", config, size, arguments.threads),
            log_path, arguments.threads)
        commands[name] = command
        label = f"{name}: {'×'.join(map(str, shape))}, width {size['model']['base_width']}"
        batched, channels_last, reference = forward["batched"], forward["channels_last"], forward["reference"]
        rows.append([label, forward["lobes"], f"{batched[0]:.1f} ({batched[1]:.1f})",
                     f"{channels_last[0]:.1f} ({channels_last[1]:.1f})", f"{reference[0]:.1f} ({reference[1]:.1f})",
                     f"{reference[0] / batched[0]:.2f}× ({reference[1] / batched[1]:.2f}×)",
                     f"{command['seconds']:.1f} ({command['cpu_seconds']:.1f})",
                     f"{logged_seconds(log_path) or float('nan'):.1f}", f"{command['peak_mib']:.0f}"])
    paper = commands["paper"]["seconds"]
    paper_idle = commands["paper"]["cpu_seconds"] / arguments.threads
    lines = [
        f"Input: RICORD 419639-000082 (512×512×255), preprocessed with config.yaml; a randomly initialised "
        f"`proposed` network (regression with attention, {config['model']['attention_channels']} attention channels), "
        f"torch {torch.__version__} on the CPU with {arguments.threads} threads. Forward seconds are the fastest of "
        f"{arguments.repeats} runs after a warm-up; the whole command runs once, under /usr/bin/time -v. "
        "Cells give wall-clock seconds with CPU seconds in brackets; on a machine shared with other jobs "
        f"the CPU seconds divided by {arguments.threads} estimate the wall clock of an idle machine.",
        "",
    ]
    lines += reporting.markdown_table(
        ["chunks, network", "lobes", "forward, batch of 5, inference_mode", "same, channels_last_3d",
         "reference: one lobe at a time, autograd on", "speed-up over reference",
         "whole infer command", "of which loading, forward and tiling", "peak memory, MiB"], rows)
    lines += ["", f"Paper size: {paper:.1f} s per scan against the targets of {PAPER_TARGET_SECONDS:.0f} s "
              f"(ratio {paper / PAPER_TARGET_SECONDS:.2f}) and {LOOSE_TARGET_SECONDS:.0f} s "
              f"(ratio {paper / LOOSE_TARGET_SECONDS:.2f}); CPU seconds / {arguments.threads} = {paper_idle:.1f} s "
              f"(ratios {paper_idle / PAPER_TARGET_SECONDS:.2f} and {paper_idle / LOOSE_TARGET_SECONDS:.2f})."]
    return lines


if __name__ == "__main__":
    main()
