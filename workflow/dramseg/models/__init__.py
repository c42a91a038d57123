"""Networks of the pipeline and build_model, which builds one from the `model` config section."""

from __future__ import annotations

from torch import nn

from dramseg.models.attention import AttentionRefinement
from dramseg.models.blocks import ConvBlock, make_activation, make_norm
from dramseg.models.heads import ClassificationNet, RegressionNet
from dramseg.models.unet import UNet3D, UNetOutput, check_chunk_shape

MODEL_KINDS = ("regression", "supervised", "dcam", "cam")
MODEL_SETTING_KEYS = ("base_width", "depth", "norm", "activation", "attention_channels")

__all__ = [
    "AttentionRefinement",
    "ClassificationNet",
    "ConvBlock",
    "MODEL_KINDS",
    "RegressionNet",
    "UNet3D",
    "UNetOutput",
    "build_model",
    "check_chunk_shape",
    "make_activation",
    "make_norm",
]


def build_model(kind: str, model_settings: dict, attention: bool = False) -> nn.Module:
    """Build the network of a method.

    Args:
        kind: "regression" (dRAM), "supervised" (the same network without
            attention, trained on reference masks), "dcam" or "cam".
        model_settings: the `model` config section with keys base_width,
            depth, norm, activation and attention_channels.
        attention: add the attention module; only valid for "regression".

    Raises:
        ValueError: for an unknown kind, a missing key, an invalid setting,
            or attention requested for a kind other than "regression".
    """
    if kind not in MODEL_KINDS:
        raise ValueError(
            f"method kind is {kind!r}, expected one of {', '.join(MODEL_KINDS)}; "
            "fix the method's `kind` in config.yaml"
        )
    missing = [key for key in MODEL_SETTING_KEYS if key not in model_settings]
    if missing:
        raise ValueError(
            f"the model config section lacks {', '.join(missing)}; "
            "add these keys under `model:` in config.yaml"
        )
    if attention and kind != "regression":
        raise ValueError(
            f"attention is only available for kind 'regression', found kind {kind!r}; "
            "set attention: false for this method"
        )

    common = {
        "base_width": model_settings["base_width"],
        "depth": model_settings["depth"],
        "norm": model_settings["norm"],
        "activation": model_settings["activation"],
    }
    if kind in ("regression", "supervised"):
        return RegressionNet(
            **common,
            attention=attention,
            attention_channels=model_settings["attention_channels"],
        )
    return ClassificationNet(**common, dense=kind == "dcam")
