"""Time one training epoch of the full method (ER + REF + AT) and one scan's inference on a GPU.

Meant for a GPU machine without network access: it needs only torch, numpy
and the repository's torch-only modules (dramseg.models, dramseg.losses,
dramseg.transforms, dramseg.devices; run with PYTHONPATH=workflow). Where
dramseg.train can be imported too (it needs pandas, h5py, SimpleITK and
scipy), its compute_loss gives the loss. Otherwise `full_method_loss`, this
script's copy of the regression branch of compute_loss, does. On the CPU
the script checks that the two give the same loss where both import.

Synthetic data: --chunks lobe chunks of --shape³ voxels (random intensities
inside an ellipsoid lobe mask, candidate and vessel voxels from thresholds,
severity scores 0 to 5 with the default score intervals) are made in host
memory and moved to the device one batch at a time, as the training loop
does. After two warm-up batches (cuDNN autotuning), one epoch over all
chunks is timed, with bf16 autocast and cudnn.benchmark on CUDA. Then the
5 lobe chunks of one scan go through the network as one batch under
torch.inference_mode, as dramseg.infer does.

    PYTHONPATH=workflow python benchmarks/gpu_benchmark.py [--chunks 1500] [--device auto]

On the CPU, `--chunks 8 --shape 32 --width 8` runs in about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from dramseg.devices import autocast_context, configure_backend  # noqa: E402
from dramseg.losses import (  # noqa: E402
    bootstrapped_cross_entropy,
    equivariance_loss,
    interval_loss,
    lobe_mean,
    refinement_targets,
)
from dramseg.models import build_model  # noqa: E402
from dramseg.transforms import sample_transform  # noqa: E402

TARGET_EPOCH_SECONDS = 60.0
# The full method and the training settings of config.yaml and resources/config-paper.yaml.
FULL_METHOD = {"kind": "regression", "er": True, "ref": True, "attention": True}
TRAINING = {
    "loss_weights": {"interval": 2.0, "er": 1.0, "ref": 1.0, "classification": 1.0, "supervised": 1.0},
    "er_scale_range": [0.8, 1.2],
    "er_rotations_deg": [90, 180, 270],
    "ref_beta": 0.9,
    "learning_rate": 1e-5,
    "momentum": 0.9,
}
SCORE_INTERVALS = {0: (0.0, 0.0), 1: (0.01, 0.05), 2: (0.05, 0.25), 3: (0.25, 0.5), 4: (0.5, 0.75), 5: (0.75, 1.0)}


class SyntheticChunks:
    """`count` synthetic lobe chunks in host memory, served in batches of dicts like ChunkDataset's."""

    def __init__(self, count: int, shape: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        axis = torch.linspace(-1, 1, shape)
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        self.lobe = ((z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2 <= 1.0).float()
        self.images = torch.rand((count, 1, shape, shape, shape), generator=generator) * self.lobe
        self.scores = torch.randint(0, 6, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, order: torch.Tensor):
        for start in range(0, len(order), batch_size):
            items = order[start : start + batch_size]
            image = self.images[items]
            scores = self.scores[items]
            yield {
                "image": image,
                "mask": self.lobe.expand(len(items), *self.lobe.shape).contiguous(),
                "candidates": (image[:, 0] > 0.8).float(),
                "vessels": ((image[:, 0] < 0.05) & (self.lobe > 0)).float(),
                "low": torch.tensor([SCORE_INTERVALS[int(s)][0] for s in scores]),
                "high": torch.tensor([SCORE_INTERVALS[int(s)][1] for s in scores]),
                "score": scores,
                "label_positive": (scores > 0).long(),
            }


def full_method_loss(model, batch: dict, training: dict, generator: torch.Generator) -> torch.Tensor:
    """Compute the ER + REF + AT loss of one batch, as the regression branch of dramseg.train.compute_loss does."""
    weights = training["loss_weights"]
    image, mask, low, high = batch["image"], batch["mask"], batch["low"], batch["high"]
    output = model(image)
    probabilities = output["probabilities"]
    interval = interval_loss(lobe_mean(probabilities[:, 2], mask), low, high).mean()
    if "probabilities_before_attention" in output:
        before = lobe_mean(output["probabilities_before_attention"][:, 2], mask)
        interval = 0.5 * (interval + interval_loss(before, low, high).mean())
    total = weights["interval"] * interval
    targets = refinement_targets(probabilities, batch["candidates"], batch["vessels"], mask)
    total = total + weights["ref"] * bootstrapped_cross_entropy(probabilities, targets, training["ref_beta"], mask)
    transform = sample_transform(generator, tuple(training["er_scale_range"]), tuple(training["er_rotations_deg"]),
                                 size_multiple=2 ** int(model.unet.depth))
    transformed_image = transform.apply(image, mode="trilinear")
    transformed_mask = transform.apply(mask[:, None], mode="nearest")
    prediction_of_transformed = model(transformed_image)["probabilities"]
    transformed_prediction = transform.apply(probabilities, mode="trilinear")
    return total + weights["er"] * equivariance_loss(prediction_of_transformed, transformed_prediction, transformed_mask)


def loss_function(standalone: bool):
    """Return (name, function) of the loss of one batch: dramseg.train.compute_loss where it imports, else full_method_loss."""
    if not standalone:
        try:
            from dramseg.train import compute_loss
        except ImportError as error:
            print(f"dramseg.train failed to import ({error}), so full_method_loss computes the loss", file=sys.stderr)
        else:
            return "dramseg.train.compute_loss", lambda model, batch, generator: compute_loss(
                model, batch, FULL_METHOD, TRAINING, generator).total
    return "full_method_loss", lambda model, batch, generator: full_method_loss(model, batch, TRAINING, generator)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_batches(model, optimizer, loss, batches, device, autocast, generator) -> tuple[int, float]:
    """Train on each batch; return the number of chunks and the last loss."""
    chunks, value = 0, float("nan")
    for batch in batches:
        batch = {key: tensor.to(device, non_blocking=True) for key, tensor in batch.items()}
        with autocast():
            total = loss(model, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        chunks += len(batch["image"])
        value = total.detach()
    return chunks, float(value)


def check_same_loss(model, data: SyntheticChunks, device) -> float:
    """Return the absolute difference of compute_loss and full_method_loss on one batch (eval mode, same transform)."""
    from dramseg.train import compute_loss

    def real(model, batch, generator):
        return compute_loss(model, batch, FULL_METHOD, TRAINING, generator).total

    _, own = loss_function(standalone=True)
    batch = next(data.batches(2, torch.arange(min(2, len(data)))))
    batch = {key: tensor.to(device) for key, tensor in batch.items()}
    model.eval()
    with torch.no_grad():
        values = [float(function(model, batch, torch.Generator().manual_seed(1))) for function in (real, own)]
    model.train()
    return abs(values[0] - values[1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1500, help="synthetic chunks in the epoch")
    parser.add_argument("--shape", type=int, default=80, help="chunk size (voxels per axis)")
    parser.add_argument("--width", type=int, default=32, help="U-Net base width")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA too")
    parser.add_argument("--standalone", action="store_true", help="use full_method_loss even where dramseg.train imports")
    arguments = parser.parse_args(argv)

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    if arguments.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device is cuda but torch {torch.__version__} finds no CUDA GPU; use --device auto or cpu")
    device = torch.device("cuda" if arguments.device != "cpu" and torch.cuda.is_available() else "cpu")
    bf16 = not arguments.no_bf16
    configure_backend(device, cudnn_benchmark=True)
    autocast = autocast_context(device, bf16)
    torch.manual_seed(0)

    started = time.perf_counter()
    data = SyntheticChunks(arguments.chunks, arguments.shape)
    generation_seconds = time.perf_counter() - started

    model_settings = {"base_width": arguments.width, "depth": 3, "norm": "batch", "activation": "relu",
                      "attention_channels": 8}
    model = build_model("regression", model_settings, attention=True).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=TRAINING["learning_rate"], momentum=TRAINING["momentum"])
    loss_name, loss = loss_function(arguments.standalone)
    difference = None
    if device.type == "cpu":
        with contextlib.suppress(ImportError):
            difference = check_same_loss(model, data, device)
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    train_batches(model, optimizer, loss, data.batches(arguments.batch_size, order[: 2 * arguments.batch_size]),
                  device, autocast, generator)
    synchronize(device)
    warm_up_seconds = time.perf_counter() - started

    started = time.perf_counter()
    chunks, last_loss = train_batches(model, optimizer, loss, data.batches(arguments.batch_size, order), device,
                                      autocast, generator)
    synchronize(device)
    epoch_seconds = time.perf_counter() - started
    peak_training = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    model.eval()
    lobes = data.images[torch.arange(5) % len(data)].to(device)
    masks = data.lobe.expand(5, *data.lobe.shape).to(device)
    inference = []
    for _ in range(3):
        started = time.perf_counter()
        with torch.inference_mode(), autocast():
            probabilities = model(lobes)["probabilities"]
            probabilities = (probabilities * masks[:, None]).float().cpu()
        synchronize(device)
        inference.append(time.perf_counter() - started)

    rows = [
        ("torch", torch.__version__),
        ("CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}" if device.type == "cuda" else "not used"),
        ("device", torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"),
        ("chunks, shape, width, batch", f"{chunks}, {arguments.shape}³, {arguments.width}, {arguments.batch_size}"),
        ("method, loss", f"ER + REF + AT, {loss_name}"),
        ("bf16 autocast, cudnn.benchmark", f"{bf16 and device.type == 'cuda'}, {device.type == 'cuda'}"),
        ("making the chunks (s)", f"{generation_seconds:.1f}"),
        ("warm-up, up to 2 batches (s)", f"{warm_up_seconds:.1f}"),
        ("**one epoch (s)**", f"**{epoch_seconds:.1f}**"),
        ("chunks per second", f"{chunks / epoch_seconds:.1f}"),
        ("epoch of 1,500 chunks, scaled (s)", f"{epoch_seconds * 1500 / chunks:.1f}"),
        ("ratio to the 60 s target (scaled)", f"{epoch_seconds * 1500 / chunks / TARGET_EPOCH_SECONDS:.2f}"),
        ("last training loss", f"{last_loss:.4f}"),
        ("peak GPU memory in training (GiB)", f"{peak_training:.1f}" if peak_training is not None else "not on a GPU"),
        ("inference, 5 lobes batched (s, best of 3)", f"{min(inference):.2f}"),
    ]
    if difference is not None:
        rows.append(("compute_loss minus full_method_loss", f"{difference:.2e}"))
    print("| quantity | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
