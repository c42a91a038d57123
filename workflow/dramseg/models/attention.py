"""Attention module that refines the dRAM with affinities to the 18 neighbours of each voxel.

For voxel i with guidance features x_i (the image and squeezed encoder
features), the weight of neighbour j is

    w_ij = exp(max(theta(x_i) . phi(x_j), 0)) / sum_k exp(max(theta(x_i) . phi(x_k), 0))

over the 18 neighbours j, k of a 3x3x3 window with connectivity 2 (6 face
and 12 edge neighbours, the voxel itself excluded). Neighbours outside the
volume are left out of the sum, so the weights of every voxel, border and
corner voxels included, sum to one. The dRAM is projected to `channels`
feature maps by g, averaged with these weights and projected back to the
class logits by r. See docs/attention.md for the memory use.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# (dz, dy, dx) of the 18 neighbours: offsets in {-1, 0, 1}^3 with 1 or 2 non-zero entries.
NEIGHBOUR_OFFSETS_ZYX = tuple(
    offset
    for offset in itertools.product((-1, 0, 1), repeat=3)
    if 1 <= sum(abs(step) for step in offset) <= 2
)


def _shifted(padded: torch.Tensor, offset: Sequence[int], shape_zyx: Sequence[int]) -> torch.Tensor:
    """Return the view of `padded` (padded by one voxel per side) holding the value at i + offset."""
    dz, dy, dx = offset
    depth, height, width = shape_zyx
    return padded[
        :, :, 1 + dz : 1 + dz + depth, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width
    ]


def neighbour_validity(shape_zyx: Sequence[int], device=None) -> torch.Tensor:
    """Return a bool tensor [1, 18, D, H, W], True where neighbour k of a voxel lies inside the volume."""
    inside = torch.ones((1, 1, *shape_zyx), dtype=torch.float32, device=device)
    padded = F.pad(inside, (1, 1, 1, 1, 1, 1))
    columns = [_shifted(padded, offset, shape_zyx) for offset in NEIGHBOUR_OFFSETS_ZYX]
    return torch.cat(columns, dim=1) > 0.5


def neighbour_weights(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Compute the attention weights of each voxel over its 18 neighbours.

    Args:
        query: [B, L, D, H, W] embedding theta(x) of each voxel.
        key: [B, L, D, H, W] embedding phi(x) of each voxel.

    Returns:
        [B, 18, D, H, W] weights, channel k for the neighbour at
        NEIGHBOUR_OFFSETS_ZYX[k]: softmax over the neighbours of
        relu(query_i . key_j). Neighbours outside the volume get weight 0.

    Raises:
        ValueError: for a volume of one voxel, which has no neighbours.
    """
    shape_zyx = tuple(query.shape[2:])
    if all(size == 1 for size in shape_zyx):
        raise ValueError("attention needs a volume of at least 2 voxels; found shape 1 x 1 x 1")
    padded_key = F.pad(key, (1, 1, 1, 1, 1, 1))
    scores = torch.stack(
        [(query * _shifted(padded_key, offset, shape_zyx)).sum(dim=1) for offset in NEIGHBOUR_OFFSETS_ZYX],
        dim=1,
    )
    scores = F.relu(scores)
    valid = neighbour_validity(shape_zyx, device=query.device)
    scores = scores.masked_fill(~valid, float("-inf"))
    return torch.softmax(scores, dim=1)


def aggregate_neighbours(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Average `values` [B, L, D, H, W] over the 18 neighbours with `weights` [B, 18, D, H, W].

    Returns [B, L, D, H, W]. Values outside the volume count as zero, and
    neighbour_weights gives them weight zero.
    """
    shape_zyx = tuple(values.shape[2:])
    padded = F.pad(values, (1, 1, 1, 1, 1, 1))
    aggregated = torch.zeros_like(values)
    for index, offset in enumerate(NEIGHBOUR_OFFSETS_ZYX):
        aggregated = aggregated + weights[:, index : index + 1] * _shifted(padded, offset, shape_zyx)
    return aggregated


class AttentionRefinement(nn.Module):
    """Refine the dRAM logits with neighbour attention guided by the image and encoder features.

    The features of the first two encoder levels are detached, so no
    gradient reaches the encoder through this module. They are squeezed to
    `channels` maps by 1x1x1 convolutions, resized trilinearly to the image
    size and concatenated with the image into x, which has
    image_channels + 2 * channels maps.
    theta and phi (1x1x1 convolutions) embed x into `channels` maps for the
    affinities, g projects the dRAM probabilities softmax(logits) to
    `channels` maps and r projects the aggregated maps back to the classes.

    The refined logits are the original logits plus r(aggregated), so the
    module learns a residual correction, and the caller applies the softmax.
    With zero_init_output=True (the default) r starts at zero, so at the
    first training step the refined map equals the dRAM.
    """

    def __init__(
        self,
        image_channels: int = 1,
        encoder_channels: Sequence[int] = (32, 64),
        channels: int = 8,
        num_classes: int = 3,
        zero_init_output: bool = True,
    ):
        super().__init__()
        if len(encoder_channels) != 2:
            raise ValueError(
                f"attention uses two encoder levels, found encoder_channels={list(encoder_channels)}"
            )
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(
                f"model.attention_channels is {channels!r}, expected an integer >= 1; "
                "set it in config.yaml"
            )
        self.channels = channels
        self.num_classes = num_classes
        guide_channels = image_channels + 2 * channels
        self.squeeze_level1 = nn.Conv3d(encoder_channels[0], channels, kernel_size=1)
        self.squeeze_level2 = nn.Conv3d(encoder_channels[1], channels, kernel_size=1)
        self.theta = nn.Conv3d(guide_channels, channels, kernel_size=1)
        self.phi = nn.Conv3d(guide_channels, channels, kernel_size=1)
        self.g = nn.Conv3d(num_classes, channels, kernel_size=1)
        self.r = nn.Conv3d(channels, num_classes, kernel_size=1)
        if zero_init_output:
            nn.init.zeros_(self.r.weight)
            nn.init.zeros_(self.r.bias)

    def guidance(self, image: torch.Tensor, encoder_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return x [B, image_channels + 2 * channels, D, H, W]: image and squeezed, resized features."""
        shape_zyx = image.shape[2:]
        maps = [image]
        for squeeze, features in (
            (self.squeeze_level1, encoder_features[0]),
            (self.squeeze_level2, encoder_features[1]),
        ):
            squeezed = squeeze(features.detach())
            if squeezed.shape[2:] != shape_zyx:
                squeezed = F.interpolate(
                    squeezed, size=shape_zyx, mode="trilinear", align_corners=False
                )
            maps.append(squeezed)
        return torch.cat(maps, dim=1)

    def forward(
        self,
        image: torch.Tensor,
        encoder_features: Sequence[torch.Tensor],
        logits: torch.Tensor,
        return_weights: bool = False,
    ):
        """Refine `logits` [B, num_classes, D, H, W] of the dRAM.

        Args:
            image: [B, image_channels, D, H, W] network input.
            encoder_features: encoder features, level 1 first (at least two
                levels); they are detached here.
            logits: [B, num_classes, D, H, W] logits of the regression head.
            return_weights: also return the [B, 18, D, H, W] attention weights.

        Returns:
            The refined logits [B, num_classes, D, H, W], and the weights when
            return_weights is True.
        """
        guide = self.guidance(image, encoder_features)
        weights = neighbour_weights(self.theta(guide), self.phi(guide))
        projected = self.g(torch.softmax(logits, dim=1))
        refined = logits + self.r(aggregate_neighbours(projected, weights))
        if return_weights:
            return refined, weights
        return refined

    def count_forward_macs(self, inputs, output) -> int:
        """Count the multiply-adds of the affinities and the aggregation in one forward pass.

        Each voxel takes 18 dot products of length `channels` (affinities)
        and 18 weighted sums of `channels` values (aggregation). The 1x1x1
        convolutions are counted separately as Conv3d layers, and the
        softmax, exponentials and interpolation are not counted.
        """
        image = inputs[0]
        voxels = image.shape[0] * image.shape[2:].numel()
        per_voxel = 2 * len(NEIGHBOUR_OFFSETS_ZYX) * self.channels
        return int(voxels * per_voxel)
