"""Time one training step per chunk for each method component, on the CPU.

For each size, one process with torch limited to --threads threads builds
every method's network from config.yaml's `model` section at that chunk
size and width, makes one batch of synthetic lobe chunks (an ellipsoid lobe
mask, random intensities, candidate and vessel voxels, scores 0 to 5 with
config.yaml's intervals), and runs train.compute_loss, the backward pass and
an optimizer step: one warm-up step per method, then --rounds rounds of one
step of each method in turn, so that a change in the machine's load reaches
all methods alike. The figure is the fastest round's wall-clock (and CPU)
seconds per chunk. The reference in the same run is plain dRAM at the same
size: the ratio column is each method's time over dRAM's.

A second table gives the attention module's extra time and peak memory at
80³ and width 32 (the chunk size and width of Xie et al.), batch 1: dRAM
against dRAM + AT, each in a fresh process.

    python benchmarks/training.py [--threads 2] [--rounds 2] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import reporting
from reporting import WORKFLOW

SECTION_TITLE = "Training"
SCRIPT_NAME = "training.py"
COMPONENTS = {
    "dRAM": "dram",
    "+ER": "dram_er",
    "+REF": "dram_ref",
    "+AT": "dram_at",
    "ER+REF+AT (proposed)": "proposed",
    "CAM": "cam",
    "dCAM": "dcam",
}


def synthetic_batch(batch_size: int, shape_zyx: tuple[int, int, int], score_intervals: dict, seed: int = 0) -> dict:
    """Make a batch of synthetic lobe chunks with the keys ChunkDataset yields (tensors only)."""
    import numpy as np
    import torch

    random = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, size) for size in shape_zyx]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    lobe = ((z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2 <= 1.0).astype(np.float32)
    scores = random.integers(0, 6, batch_size)
    noise = random.random((batch_size, *shape_zyx), dtype=np.float32)
    return {
        "image": torch.from_numpy(noise[:, None] * lobe),
        "mask": torch.from_numpy(np.repeat(lobe[None], batch_size, axis=0)),
        "candidates": torch.from_numpy(((noise > 0.8) * lobe).astype(np.float32)),
        "vessels": torch.from_numpy(((noise < 0.05) * lobe).astype(np.float32)),
        "low": torch.tensor([score_intervals[str(s)][0] for s in scores], dtype=torch.float32),
        "high": torch.tensor([score_intervals[str(s)][1] for s in scores], dtype=torch.float32),
        "score": torch.from_numpy(scores.astype(np.int64)),
        "label_positive": torch.from_numpy((scores > 0).astype(np.int64)),
    }


def peak_mib() -> float:
    """Return this process's peak resident memory (VmHWM), in MiB."""
    found = re.search(r"^VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(found.group(1)) / 1024 if found else float("nan")


def training_step(method: str, width: int, batch: dict):
    """Build `method`'s network at `width` and return a function that runs one training step on `batch`."""
    import torch

    from dramseg.models import build_model
    from dramseg.train import compute_loss, make_optimizer

    config = reporting.load_config()
    spec = config["methods"][method]
    training = config["training"]
    torch.manual_seed(0)
    model = build_model(spec["kind"], dict(config["model"], base_width=width), attention=spec["attention"])
    model.train()
    optimizer = make_optimizer(model, training)
    generator = torch.Generator().manual_seed(0)

    def step():
        terms = compute_loss(model, batch, spec, training, generator)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()

    return step


def worker(methods: list[str], shape: int, width: int, batch_size: int, rounds: int, threads: int) -> dict:
    """Time training steps of several methods in turn; return each one's fastest step per chunk and the peak memory.

    After one warm-up step each, every round runs one step of each method, so
    a change in the machine's load reaches all methods alike, and the fastest
    of the rounds is each method's figure.
    """
    sys.path.insert(0, str(WORKFLOW))
    import torch

    torch.set_num_threads(threads)
    config = reporting.load_config()
    batch = synthetic_batch(batch_size, (shape,) * 3, config["chunks"]["score_intervals"])
    steps = {method: training_step(method, width, batch) for method in methods}
    for step in steps.values():
        step()
    wall = {method: [] for method in methods}
    cpu = {method: [] for method in methods}
    for _ in range(rounds):
        for method, step in steps.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            step()
            wall[method].append(time.perf_counter() - started)
            cpu[method].append(time.process_time() - started_cpu)
    return {"peak_mib": peak_mib(), "methods": {
        method: {"seconds_per_chunk": min(wall[method]) / batch_size,
                 "cpu_seconds_per_chunk": min(cpu[method]) / batch_size} for method in methods}}


def run_worker(methods: list[str], shape: int, width: int, batch_size: int, rounds: int, threads: int) -> dict:
    """Run `worker` in a fresh process; return its result."""
    command = [sys.executable, __file__, "--worker", ",".join(methods), "--shape", str(shape), "--width", str(width),
               "--batch-size", str(batch_size), "--rounds", str(rounds), "--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               env=reporting.stage_environment(threads))
    if completed.returncode != 0:
        raise SystemExit(f"the worker for {methods} failed:\n{completed.stderr}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"{methods} {shape}³ width {width}: {result}", file=sys.stderr)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (one step of each method) after a warm-up")
    parser.add_argument("--medium-batch", type=int, default=2,
                        help="batch size at the medium size (48³, width 16), to keep the run short")
    parser.add_argument("--update-docs", action="store_true", help="replace the results block in docs/benchmarks.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker:
        print(json.dumps(worker(arguments.worker.split(","), arguments.shape, arguments.width, arguments.batch_size,
                                arguments.rounds, arguments.threads)))
        return

    config = reporting.load_config()
    header = reporting.header_lines(reporting.command_line())
    batch_size = config["training"]["batch_size"]
    default = (config["chunks"]["shape"][0], config["model"]["base_width"])
    sizes = {"default": default, "medium": (48, 16)}
    batches = {"default": batch_size, "medium": arguments.medium_batch}
    results = {}
    for size in sizes:
        measured = run_worker(list(COMPONENTS.values()), *sizes[size], batches[size], arguments.rounds, arguments.threads)
        results.update({(name, size): measured["methods"][method] for name, method in COMPONENTS.items()})
    attention = {}
    for method in ("dram", "dram_at"):
        measured = run_worker([method], 80, 32, 1, 1, arguments.threads)
        attention[method] = dict(measured["methods"][method], peak_mib=measured["peak_mib"])

    import torch

    lines = [f"Synthetic batches of {batch_size} lobe chunks ({arguments.medium_batch} at the medium size), config.yaml's model (depth {config['model']['depth']}, "
             f"{config['model']['norm']} norm, {config['model']['attention_channels']} attention channels), loss "
             f"weights and {config['training']['optimizer']} optimizer; torch {torch.__version__} on the CPU with "
             f"{arguments.threads} threads, float32. One process per size builds every method and runs one warm-up "
             f"step of each, then {arguments.rounds} rounds of one step of each method in turn. A cell is the fastest "
             "round's step divided by the batch size, with CPU seconds in brackets.", ""]
    rows = []
    for name in COMPONENTS:
        row = [name]
        for size in sizes:
            measured, reference = results[(name, size)], results[("dRAM", size)]
            row += [f"{measured['seconds_per_chunk']:.3f} ({measured['cpu_seconds_per_chunk']:.3f})",
                    f"{measured['seconds_per_chunk'] / reference['seconds_per_chunk']:.2f}× "
                    f"({measured['cpu_seconds_per_chunk'] / reference['cpu_seconds_per_chunk']:.2f}×)"]
        rows.append(row)
    columns = ["component"]
    for size, (shape, width) in sizes.items():
        columns += [f"{size} {shape}³ width {width}, batch {batches[size]}: s per chunk", "ratio to dRAM"]
    lines += reporting.markdown_table(columns, rows)

    plain, refined = attention["dram"], attention["dram_at"]
    extra_seconds = refined["seconds_per_chunk"] - plain["seconds_per_chunk"]
    extra_mib = refined["peak_mib"] - plain["peak_mib"]
    lines += ["", "Attention module at 80³, width 32 (the size of Xie et al.), batch 1, one step after a warm-up; "
              "each row is a fresh process, and peak memory is its VmHWM:", ""]
    lines += reporting.markdown_table(
        ["network", "seconds per step", "CPU seconds", "peak MiB"],
        [["dRAM", f"{plain['seconds_per_chunk']:.1f}", f"{plain['cpu_seconds_per_chunk']:.1f}", f"{plain['peak_mib']:.0f}"],
         ["dRAM + AT", f"{refined['seconds_per_chunk']:.1f}", f"{refined['cpu_seconds_per_chunk']:.1f}",
          f"{refined['peak_mib']:.0f}"],
         ["attention's share", f"+{extra_seconds:.1f} ({extra_seconds / plain['seconds_per_chunk']:+.0%})",
          f"{refined['cpu_seconds_per_chunk'] - plain['cpu_seconds_per_chunk']:+.1f}",
          f"+{extra_mib:.0f} ({extra_mib / plain['peak_mib']:+.0%})"]])
    lines.append("")
    lines.append(f"Load average at the end: {reporting.load_average():.1f}.")
    block = "\n".join(header + [""] + lines)
    print(block)
    if arguments.update_docs:
        reporting.update_docs_section(SECTION_TITLE, SCRIPT_NAME, block)


if __name__ == "__main__":
    main()
