"""Parameter and multiply-add (MAC) counts of the networks of each method.

Counting method (count_macs):
- Conv3d: output voxels x out_channels x (in_channels / groups) x kernel
  volume, per sample; the bias is not counted.
- Linear: batch x in_features x out_features.
- AttentionRefinement: its 1x1x1 convolutions as Conv3d, plus 18 x channels
  multiply-adds per voxel for the affinities and 18 x channels for the
  aggregation (AttentionRefinement.count_forward_macs).
- ClassificationNet: the CAM product, 2 x channels per feature voxel.
- Not counted: normalisation, activations, max pooling, softmax,
  exponentials, lobe-wise pooling and trilinear interpolation.
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

import torch
from torch import nn

from dramseg import io, settings
from dramseg.models import build_model, check_chunk_shape
from dramseg.models.heads import ClassificationNet

logger = logging.getLogger(__name__)

# Backward pass cost, in forward passes; the usual estimate for convolutional networks.
BACKWARD_TO_FORWARD_RATIO = 2


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters of `model`, trainable or not."""
    return sum(parameter.numel() for parameter in model.parameters())


def count_macs(
    model: nn.Module,
    input_shape_zyx: Sequence[int],
    batch: int = 1,
    with_mask: bool = False,
    in_channels: int = 1,
) -> int:
    """Count the multiply-adds of one forward pass (see the module docstring for what is counted).

    Args:
        model: network taking x [batch, in_channels, D, H, W], and a lobe mask
            [batch, D, H, W] as second argument when with_mask is True.
        input_shape_zyx: chunk size (voxels, z y x).
        batch: number of chunks in the forward pass.
        with_mask: pass an all-ones lobe mask (classification networks).
        in_channels: channels of the input chunk.

    The pass runs in eval mode without gradients, and the model's training
    mode is restored afterwards.
    """
    total = 0

    def count_conv(module: nn.Conv3d, inputs, output) -> None:
        nonlocal total
        kernel = module.weight.shape[2:].numel()
        total += output.numel() * (module.in_channels // module.groups) * kernel

    def count_linear(module: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    def count_extra(module: nn.Module, inputs, output) -> None:
        nonlocal total
        total += module.count_forward_macs(inputs, output)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            handles.append(module.register_forward_hook(count_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(count_linear))
        if hasattr(module, "count_forward_macs"):
            handles.append(module.register_forward_hook(count_extra))

    was_training = model.training
    parameter = next(model.parameters())
    x = torch.zeros((batch, in_channels, *input_shape_zyx), dtype=parameter.dtype, device=parameter.device)
    try:
        model.eval()
        with torch.no_grad():
            if with_mask:
                model(x, torch.ones((batch, *input_shape_zyx), dtype=x.dtype, device=x.device))
            else:
                model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return int(total)


def complexity_report(
    kind: str,
    model_settings: dict,
    attention: bool,
    er: bool,
    chunk_shape_zyx: Sequence[int],
) -> dict:
    """Count the parameters and MACs of a method's network for one chunk.

    Returns a dict with
        params: number of parameters;
        macs_test: MACs of one forward pass of one chunk;
        macs_train_forward: MACs of the forward passes of one training step
            for one chunk. That is one pass, plus the siamese pass on the
            transformed chunk when er is True. The siamese pass is estimated
            at the chunk size, because the transformed size is random and
            averages to about that size;
        macs_train: macs_train_forward x (1 + BACKWARD_TO_FORWARD_RATIO),
            an estimate of forward plus backward, since the backward pass is
            not counted but estimated as 2 forward passes;
    plus the inputs (kind, attention, er, chunk_shape_zyx) and a note on the
    counting method.
    """
    check_chunk_shape(chunk_shape_zyx, model_settings["depth"])
    model = build_model(kind, model_settings, attention=attention)
    with_mask = isinstance(model, ClassificationNet)
    macs_test = count_macs(model, chunk_shape_zyx, batch=1, with_mask=with_mask)
    forward_passes = 2 if er else 1
    macs_train_forward = forward_passes * macs_test
    return {
        "kind": kind,
        "attention": bool(attention),
        "er": bool(er),
        "chunk_shape_zyx": [int(size) for size in chunk_shape_zyx],
        "params": count_parameters(model),
        "macs_test": macs_test,
        "macs_train_forward": macs_train_forward,
        "macs_train": macs_train_forward * (1 + BACKWARD_TO_FORWARD_RATIO),
        "counting": (
            "multiply-adds of Conv3d, Linear, attention affinities and aggregation, and the CAM "
            "product; normalisation, activations, pooling, softmax and interpolation not counted; "
            f"backward estimated as {BACKWARD_TO_FORWARD_RATIO} forward passes"
        ),
    }


def main(argv=None) -> None:
    """Write the complexity report of one method as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="method name, a key of the `methods` config section")
    parser.add_argument("--out-json", required=True, help="output JSON path")
    settings.add_settings_argument(parser)
    args = parser.parse_args(argv)
    settings.configure_logging()

    config = args.settings
    for section in ("methods", "model", "chunks"):
        if section not in config:
            parser.error(f"--settings lacks the {section!r} section; the rule must pass methods, model and chunks")
    if args.method not in config["methods"]:
        parser.error(
            f"method {args.method!r} is not in the methods section; "
            f"known methods: {', '.join(sorted(config['methods']))}"
        )
    method = config["methods"][args.method]
    report = complexity_report(
        kind=method["kind"],
        model_settings=config["model"],
        attention=method.get("attention", False),
        er=method.get("er", False),
        chunk_shape_zyx=config["chunks"]["shape"],
    )
    report["method"] = args.method
    logger.info(
        "method %s: %d parameters, %.3g MACs per test chunk", args.method, report["params"], report["macs_test"]
    )
    io.write_json(report, args.out_json)


if __name__ == "__main__":
    main()
