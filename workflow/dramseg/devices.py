"""Torch device selection, so the same code runs on the CPU and on CUDA."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(requested: str, allow_cpu_fallback: bool) -> torch.device:
    """Return the torch device for the config's `device` setting.

    "cuda" without a usable GPU raises RuntimeError, unless `allow_cpu_fallback`
    is set, in which case the CPU is used with a warning. "auto" picks CUDA when
    available.
    """
    if requested == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if requested == "auto":
        return torch.device("cuda" if available else "cpu")
    if requested == "cuda":
        if available:
            return torch.device("cuda")
        if allow_cpu_fallback:
            log.warning("device is cuda but no CUDA GPU is available to torch %s; running on the CPU", torch.__version__)
            return torch.device("cpu")
        raise RuntimeError(
            f"device is 'cuda' but torch {torch.__version__} finds no CUDA GPU (torch.cuda.is_available() is False). "
            "Set device: cpu (or auto) in config.yaml, or allow_cpu_fallback: true to run on the CPU with a warning"
        )
    raise ValueError(f"device {requested!r} is not one of cpu, cuda, auto")


def configure_backend(device: torch.device, cudnn_benchmark: bool) -> None:
    """Enable cuDNN autotuning on CUDA when requested."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark


def autocast_context(device: torch.device, bf16: bool):
    """Return a factory of autocast contexts: bfloat16 on CUDA when enabled, a no-op otherwise."""
    if device.type == "cuda" and bf16:
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext
