"""3D U-Net that produces dense features at the input resolution."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dramseg.models.blocks import ConvBlock, check_activation_kind, check_norm_kind


class UNetOutput(NamedTuple):
    """Features of one U-Net forward pass.

    dense: [B, base_width, D, H, W] output of the last up-sampling level, or
        None when the network was built without a decoder.
    encoder: features of each down-sampling level before pooling, level 1
        first. Level i (1-based) has base_width * 2**(i-1) channels and
        spatial size (D, H, W) / 2**(i-1).
    bottom: [B, base_width * 2**depth, D / 2**depth, H / 2**depth, W / 2**depth].
    """

    dense: torch.Tensor | None
    encoder: list[torch.Tensor]
    bottom: torch.Tensor


def check_chunk_shape(shape_zyx: Sequence[int], depth: int) -> None:
    """Raise ValueError when a chunk dimension is not divisible by 2**depth.

    Each of the `depth` max-pooling steps halves the chunk, so every size
    (voxels, z y x) must be a positive multiple of 2**depth.
    """
    factor = 2**depth
    for size in shape_zyx:
        if size < 1:
            raise ValueError(f"chunk size {size} is invalid; use a positive multiple of {factor} such as {4 * factor}")
        if size % factor != 0:
            suggestion = max(factor, round(size / factor) * factor)
            raise ValueError(
                f"chunk size {size} is not divisible by {factor} (2**depth); "
                f"use a multiple of {factor} such as {suggestion}"
            )


class UNet3D(nn.Module):
    """3D U-Net with `depth` down-sampling and `depth` up-sampling levels.

    Level i (0-based) has base_width * 2**i filters: two 3x3x3 convolutions,
    then 2x max pooling. The bottom has two convolutions with
    base_width * 2**depth filters. Each up-sampling level resizes by 2 with
    trilinear interpolation, concatenates the skip features of the same level
    and applies two convolutions. All convolutions use zero padding, so the
    dense output has the input's spatial size, which must be divisible by
    2**depth in every axis (see check_chunk_shape).

    With decoder=False the up-sampling path is not built and `dense` is None
    (used by the low-resolution CAM baseline).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_width: int = 32,
        depth: int = 3,
        norm: str = "batch",
        activation: str = "relu",
        decoder: bool = True,
    ):
        super().__init__()
        check_unet_settings(in_channels, base_width, depth, norm, activation)
        self.in_channels = in_channels
        self.base_width = base_width
        self.depth = depth
        self.has_decoder = decoder

        widths = [base_width * 2**level for level in range(depth + 1)]
        self.widths = widths
        self.encoder_blocks = nn.ModuleList()
        previous = in_channels
        for level in range(depth):
            self.encoder_blocks.append(ConvBlock(previous, widths[level], norm, activation))
            previous = widths[level]
        self.bottom_block = ConvBlock(widths[depth - 1], widths[depth], norm, activation)

        # decoder_blocks[0] is the deepest up-sampling level.
        self.decoder_blocks = nn.ModuleList()
        if decoder:
            for level in reversed(range(depth)):
                in_ch = widths[level + 1] + widths[level]
                self.decoder_blocks.append(ConvBlock(in_ch, widths[level], norm, activation))

    @property
    def bottom_channels(self) -> int:
        """Number of channels of the bottom features."""
        return self.widths[self.depth]

    def forward(self, x: torch.Tensor) -> UNetOutput:
        """Run the network on x [B, in_channels, D, H, W] (float)."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet3D expects input [B, {self.in_channels}, D, H, W], found {list(x.shape)}"
            )
        check_chunk_shape(x.shape[2:], self.depth)

        encoder = []
        features = x
        for block in self.encoder_blocks:
            features = block(features)
            encoder.append(features)
            features = F.max_pool3d(features, kernel_size=2)
        bottom = self.bottom_block(features)

        if not self.has_decoder:
            return UNetOutput(dense=None, encoder=encoder, bottom=bottom)

        features = bottom
        for block, skip in zip(self.decoder_blocks, reversed(encoder)):
            features = F.interpolate(
                features, size=skip.shape[2:], mode="trilinear", align_corners=False
            )
            features = block(torch.cat([features, skip], dim=1))
        return UNetOutput(dense=features, encoder=encoder, bottom=bottom)


def check_unet_settings(
    in_channels: int, base_width: int, depth: int, norm: str, activation: str
) -> None:
    """Raise ValueError with the key and allowed values when a U-Net setting is invalid."""
    for key, value in (("in_channels", in_channels), ("base_width", base_width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"model.{key} is {value!r}, expected an integer >= 1; "
                f"set model.{key} in config.yaml to a positive integer"
            )
    check_norm_kind(norm)
    check_activation_kind(activation)
