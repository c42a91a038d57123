"""Small typed building blocks of the 3D networks: convolutions, normalisation, activation."""

from __future__ import annotations

from torch import nn

NORM_KINDS = ("batch", "instance", "group", "none")
ACTIVATION_KINDS = ("relu", "leaky_relu", "elu")

# Negative slope of the leaky ReLU; Kaiming initialisation uses the same value.
LEAKY_RELU_SLOPE = 0.01


def check_norm_kind(kind: str) -> None:
    """Raise ValueError when `kind` is not one of NORM_KINDS."""
    if kind not in NORM_KINDS:
        raise ValueError(
            f"model.norm is {kind!r}, expected one of {', '.join(NORM_KINDS)}; "
            "set model.norm in config.yaml to one of these"
        )


def check_activation_kind(kind: str) -> None:
    """Raise ValueError when `kind` is not one of ACTIVATION_KINDS."""
    if kind not in ACTIVATION_KINDS:
        raise ValueError(
            f"model.activation is {kind!r}, expected one of {', '.join(ACTIVATION_KINDS)}; "
            "set model.activation in config.yaml to one of these"
        )


def group_count(channels: int, max_groups: int = 8) -> int:
    """Return the largest number of groups up to `max_groups` that divides `channels`."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def make_norm(kind: str, channels: int) -> nn.Module:
    """Build the normalisation layer `kind` for `channels` feature maps.

    "batch" is BatchNorm3d, "instance" is InstanceNorm3d with learned affine
    parameters, "group" is GroupNorm with up to 8 groups (the largest count
    that divides `channels`) and "none" is the identity.
    """
    check_norm_kind(kind)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return nn.Identity()


def make_activation(kind: str) -> nn.Module:
    """Build the activation layer `kind` ("relu", "leaky_relu" or "elu")."""
    check_activation_kind(kind)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)
    return nn.ELU(inplace=True)


def init_kaiming(module: nn.Module, activation: str) -> None:
    """Initialise every Conv3d and Linear in `module` with Kaiming (He) normal weights.

    Weights use fan-in mode with the gain of `activation` (ELU uses the ReLU
    gain). Biases start at zero, normalisation layers at weight 1 and bias 0.
    """
    check_activation_kind(activation)
    if activation == "leaky_relu":
        nonlinearity, slope = "leaky_relu", LEAKY_RELU_SLOPE
    else:
        nonlinearity, slope = "relu", 0.0
    for layer in module.modules():
        if isinstance(layer, (nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, a=slope, mode="fan_in", nonlinearity=nonlinearity)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)):
            if layer.weight is not None:
                nn.init.ones_(layer.weight)
                nn.init.zeros_(layer.bias)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions with zero padding, each followed by norm and activation.

    Input [B, in_ch, D, H, W], output [B, out_ch, D, H, W] (same spatial size).
    The convolutions have no bias when a normalisation layer follows them,
    because the normalisation removes it.
    """

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", activation: str = "relu"):
        check_norm_kind(norm)
        check_activation_kind(activation)
        bias = norm == "none"
        super().__init__(
            nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=bias),
            make_norm(norm, out_ch),
            make_activation(activation),
            nn.Conv3d(out_ch, out_ch, kernel_size=3, padding=1, bias=bias),
            make_norm(norm, out_ch),
            make_activation(activation),
        )
        self.in_ch = in_ch
        self.out_ch = out_ch
        init_kaiming(self, activation)
