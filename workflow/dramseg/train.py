"""Train one method on the lobe chunks of the training split and select it on the validation split.

Methods (config `methods`): `regression` is dRAM, optionally with equivariant
regularisation (ER), the refinement loss (REF) and the attention module (AT).
`dcam` and `cam` are the classification baselines. `supervised` is the same
U-Net trained on reference masks, the pipeline's stand-in for nnU-Net.

A resumable checkpoint is written every `training.checkpoint_every` epochs and
at the end. A rerun after an interruption continues from it when it was made
with the same settings, and the shuffling and transforms of each epoch are
seeded by (seed, epoch), so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from dramseg import io
from dramseg.anatomy import LOBE_NAMES
from dramseg.dataset import ChunkDataset
from dramseg.devices import autocast_context, configure_backend, resolve_device
from dramseg.losses import (
    bootstrapped_cross_entropy,
    classification_loss,
    dice_cross_entropy_loss,
    equivariance_loss,
    interval_loss,
    lobe_mean,
    refinement_targets,
)
from dramseg.models import build_model
from dramseg.settings import add_settings_argument, configure_logging, settings_hash
from dramseg.transforms import sample_transform

log = logging.getLogger(__name__)

MODEL_FORMAT = "dramseg-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class LossTerms:
    """Loss of one batch, with its parts for the training log."""

    total: torch.Tensor
    parts: dict[str, float]
    in_interval: int = 0
    lobes: int = 0


def model_metadata(method: str, settings: dict) -> dict:
    """Return the settings a checkpoint carries, which inference checks against its config."""
    spec = settings["method"]
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "method": method,
        "kind": spec["kind"],
        "components": {"er": spec["er"], "ref": spec["ref"], "attention": spec["attention"]},
        "model": settings["model"],
        "chunk_shape_zyx": list(settings["chunks"]["shape"]),
        "hu_window": list(settings["chunks"]["hu_window"]),
        "background_value": settings["chunks"]["background_value"],
        "spacing_mm": settings["resample"]["spacing_mm"],
        "score_intervals": settings["chunks"]["score_intervals"],
        "label_order": list(LOBE_NAMES),
        "classes": ["background", "vessel", "lesion"],
    }


def compute_loss(
    model, batch: dict, spec: dict, training: dict, generator: torch.Generator | None, refine: bool = True
) -> LossTerms:
    """Compute the loss of one batch for the method described by `spec`.

    `generator` draws the equivariant transform; None disables ER. `refine`
    False leaves out the refinement loss (during its warm-up and in
    validation, whose loss is the interval loss alone so that epochs compare).
    """
    kind = spec["kind"]
    weights = training["loss_weights"]
    image, mask = batch["image"], batch["mask"]

    if kind in ("dcam", "cam"):
        output = model(image, mask)
        loss = weights["classification"] * classification_loss(output["logits"], batch["label_positive"])
        correct = int((output["logits"].argmax(dim=1) == batch["label_positive"]).sum())
        return LossTerms(loss, {"classification": float(loss.detach())}, correct, len(image))

    output = model(image)
    probabilities = output["probabilities"]

    if kind == "supervised":
        targets = torch.where(batch["reference"] > 0, 2, torch.where(batch["vessels"] > 0, 1, 0)).long()
        loss = weights["supervised"] * dice_cross_entropy_loss(output["logits"], targets, mask)
        return LossTerms(loss, {"supervised": float(loss.detach())})

    low, high = batch["low"], batch["high"]
    fractions = lobe_mean(probabilities[:, 2], mask)
    # The loss is computed on percentages or on fractions (training.interval_loss_unit).
    # On percentages its squared terms are 10^4 times larger, which keeps the
    # refinement loss from erasing the dRAM.
    scale = 100.0 if training["interval_loss_unit"] == "percent" else 1.0
    interval = interval_loss(scale * fractions, scale * low, scale * high).mean()
    if "probabilities_before_attention" in output:
        # The regression task also trains the dRAM before attention, so the
        # attention module refines a map that is already a dRAM.
        before = lobe_mean(output["probabilities_before_attention"][:, 2], mask)
        interval = 0.5 * (interval + interval_loss(scale * before, scale * low, scale * high).mean())
    parts = {"interval": float(interval.detach())}
    total = weights["interval"] * interval

    if spec["ref"] and refine:
        targets = refinement_targets(probabilities, batch["candidates"], batch["vessels"], mask)
        refinement = bootstrapped_cross_entropy(probabilities, targets, training["ref_beta"], mask)
        parts["ref"] = float(refinement.detach())
        total = total + weights["ref"] * refinement

    if spec["er"] and generator is not None:
        transform = sample_transform(
            generator,
            tuple(training["er_scale_range"]),
            tuple(training["er_rotations_deg"]),
            size_multiple=2 ** model_depth(model),
        )
        transformed_image = transform.apply(image, mode="trilinear")
        transformed_mask = transform.apply(mask[:, None], mode="nearest")
        prediction_of_transformed = model(transformed_image)["probabilities"]
        transformed_prediction = transform.apply(probabilities, mode="trilinear")
        equivariance = equivariance_loss(prediction_of_transformed, transformed_prediction, transformed_mask)
        parts["er"] = float(equivariance.detach())
        total = total + weights["er"] * equivariance

    inside = ((fractions >= low - 1e-6) & (fractions <= high + 1e-6)).sum()
    return LossTerms(total, parts, int(inside), len(image))


def model_depth(model) -> int:
    """Down-sampling levels of a model; transformed chunks must stay divisible by 2**depth."""
    return int(model.unet.depth)


def make_loader(dataset, training: dict, seed: int, epoch: int, shuffle: bool) -> DataLoader:
    """Build the loader of one epoch; its order depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    sampler = None
    if shuffle and training["sampler"] == "balanced":
        scores = dataset.rows["score"].to_numpy()
        counts = {score: int((scores == score).sum()) for score in np.unique(scores)}
        weights = torch.tensor([1.0 / counts[score] for score in scores], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, num_samples=len(scores), replacement=True, generator=generator)
    return DataLoader(
        dataset,
        batch_size=training["batch_size"],
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=training["num_workers"],
        drop_last=False,
    )


def run_epoch(model, loader, spec, training, device, optimizer=None, generator=None, autocast=None, refine=True) -> dict:
    """Train (with an optimizer) or evaluate (without) for one pass; return the mean loss and parts."""
    model.train(optimizer is not None)
    totals: dict[str, float] = {}
    loss_sum, batches, inside, lobes = 0.0, 0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for batch in loader:
            batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
            with autocast():
                terms = compute_loss(model, batch, spec, training, generator, refine=refine)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                terms.total.backward()
                optimizer.step()
            loss = float(terms.total.detach())
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss}; lower training.learning_rate (now {training['learning_rate']})"
                )
            loss_sum += loss
            batches += 1
            inside += terms.in_interval
            lobes += terms.lobes
            for name, value in terms.parts.items():
                totals[name] = totals.get(name, 0.0) + value
    batches = max(batches, 1)
    result = {"loss": loss_sum / batches, "in_interval": inside / lobes if lobes else float("nan")}
    result.update({name: value / batches for name, value in totals.items()})
    return result


def make_optimizer(model, training: dict) -> torch.optim.Optimizer:
    if training["optimizer"] == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=training["learning_rate"],
            momentum=training["momentum"],
            weight_decay=training["weight_decay"],
        )
    return torch.optim.Adam(model.parameters(), lr=training["learning_rate"], weight_decay=training["weight_decay"])


def train_method(
    method: str,
    index_csv: str | Path,
    out_model: str | Path,
    out_history: str | Path,
    checkpoint_dir: str | Path,
    settings: dict,
    threads: int = 1,
    stop_after_epoch: int | None = None,
) -> None:
    """Train `method` and write the selected model and the per-epoch history.

    `stop_after_epoch` ends the run early after that epoch's checkpoint, to
    test resuming; a normal run leaves it None.
    """
    spec, training = settings["method"], settings["training"]
    torch.set_num_threads(threads)
    device = resolve_device(settings["device"], settings["allow_cpu_fallback"])
    configure_backend(device, training["cudnn_benchmark"])
    autocast = autocast_context(device, training["bf16_autocast"])
    seed = settings["seed"]
    torch.manual_seed(seed)

    kind = spec["kind"]
    with_reference = kind == "supervised"
    train_set = ChunkDataset(index_csv, splits=("train",), cache_in_memory=training["cache_in_memory"], with_reference=with_reference)
    val_set = ChunkDataset(index_csv, splits=("val",), cache_in_memory=training["cache_in_memory"], with_reference=with_reference)
    if len(train_set) == 0:
        raise ValueError(f"method {method!r}: the chunk index {str(index_csv)!r} has no training chunks; add train scans")
    log.info("method %s (%s): %d training and %d validation chunks on %s", method, kind, len(train_set), len(val_set), device)

    model = build_model(kind, settings["model"], attention=spec["attention"]).to(device)
    optimizer = make_optimizer(model, training)
    run_hash = settings_hash(settings)
    checkpoint_path = Path(checkpoint_dir) / "last.pt"
    state = _load_checkpoint(checkpoint_path, run_hash, model, optimizer, device)
    history = state["history"] if state else []
    best = state["best"] if state else None
    first_epoch = state["epoch"] + 1 if state else 1
    if state:
        log.info("resuming %s from the checkpoint of epoch %d", method, state["epoch"])

    for epoch in range(first_epoch, training["epochs"] + 1):
        started = time.perf_counter()
        epoch_generator = torch.Generator().manual_seed(seed * 7_919 + epoch)
        train_result = run_epoch(
            model, make_loader(train_set, training, seed, epoch, shuffle=True), spec, training, device,
            optimizer=optimizer, generator=epoch_generator, autocast=autocast,
            refine=epoch > training["ref_warmup_epochs"],
        )
        val_result = (
            run_epoch(
                model, make_loader(val_set, training, seed, epoch, shuffle=False), spec, training, device,
                autocast=autocast, refine=False,
            )
            if len(val_set)
            else {"loss": train_result["loss"], "in_interval": float("nan")}
        )
        seconds = time.perf_counter() - started
        row = {"epoch": epoch, "train_loss": train_result["loss"], "val_loss": val_result["loss"], "seconds": round(seconds, 3)}
        row.update({f"train_{name}": value for name, value in train_result.items() if name != "loss"})
        row["val_in_interval"] = val_result["in_interval"]
        history.append(row)
        log.info(
            "epoch %d/%d: loss %.5f, val loss %.5f, val in interval %.2f, %.1f s",
            epoch, training["epochs"], row["train_loss"], row["val_loss"], row["val_in_interval"], seconds,
        )
        # A refined method is selected among epochs after the warm-up, where the refinement acted.
        selectable = not spec["ref"] or epoch > training["ref_warmup_epochs"] or epoch == training["epochs"]
        if training["selection"] == "last":
            selectable = epoch == training["epochs"]
        if selectable and (best is None or training["selection"] == "last" or val_result["loss"] < best["val_loss"]):
            best = {"epoch": epoch, "val_loss": val_result["loss"], "state_dict": _cpu_state(model)}
        if epoch % training["checkpoint_every"] == 0 or epoch == training["epochs"]:
            _save_checkpoint(checkpoint_path, run_hash, epoch, model, optimizer, history, best)
            log.info("checkpoint written at epoch %d", epoch)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            log.info("stopping after epoch %d as requested", epoch)
            return

    io.write_csv(pd.DataFrame(history), out_history)
    payload = model_metadata(method, settings)
    payload.update({"state_dict": best["state_dict"], "epoch": best["epoch"], "val_loss": best["val_loss"], "settings_hash": run_hash})
    with io.atomic_path(out_model) as temporary:
        torch.save(payload, temporary)
    log.info("method %s: selected epoch %d (val loss %.5f), written to %s", method, best["epoch"], best["val_loss"], out_model)


def _cpu_state(model) -> dict:
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def _save_checkpoint(path: Path, run_hash: str, epoch: int, model, optimizer, history, best) -> None:
    state = {
        "settings_hash": run_hash,
        "epoch": epoch,
        "model": _cpu_state(model),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "best": best,
        "torch_rng": torch.get_rng_state(),
    }
    with io.atomic_path(path) as temporary:
        torch.save(state, temporary)


def _load_checkpoint(path: Path, run_hash: str, model, optimizer, device) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        log.warning("ignoring unreadable checkpoint %s (%s); training starts again", path, error)
        return None
    if state.get("settings_hash") != run_hash:
        log.warning("checkpoint %s was made with other settings; training starts again", path)
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train one method on the chunk stores")
    parser.add_argument("--method", required=True, help="method name (a key of config methods)")
    parser.add_argument("--index", required=True, help="results/chunks/index.csv")
    parser.add_argument("--out-model", required=True, help="model.pt to write")
    parser.add_argument("--out-history", required=True, help="per-epoch history CSV to write")
    parser.add_argument("--checkpoint-dir", required=True, help="folder of the resumable checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--stop-after-epoch", type=int, default=None, help="end early after this epoch (for tests)")
    add_settings_argument(parser)
    arguments = parser.parse_args(argv)
    configure_logging()
    train_method(
        arguments.method, arguments.index, arguments.out_model, arguments.out_history,
        arguments.checkpoint_dir, arguments.settings, arguments.threads, arguments.stop_after_epoch,
    )


if __name__ == "__main__":
    main()
