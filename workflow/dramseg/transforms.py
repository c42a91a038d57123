"""Random resize-and-rotate transforms T of the equivariant regularisation.

The equivariance loss compares F(T(I)) with T(F(I)) inside T(lobe mask).
Both sides live on the transformed grid, so a transform that changes the
chunk size needs no inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

# Spatial dimensions of a [B, C, D, H, W] tensor spanning the plane of a rotation about each axis.
ROTATION_PLANES = {"z": (3, 4), "y": (2, 4), "x": (2, 3)}


@dataclass(frozen=True)
class EquivariantTransform:
    """Resize by per-axis factors, then rotate by quarter turns about one axis.

    scale_zyx: resize factors along z, y, x.
    quarter_turns: number of 90-degree rotations (0 to 3).
    axis: rotation axis, "z", "y" or "x". The rotation turns the plane of
        the other two axes from the first of them towards the second, as
        torch.rot90 does.
    size_multiple: every output size (voxels) is rounded to a multiple of
        this number, e.g. 2**depth so that the U-Net accepts the result.
    """

    scale_zyx: tuple[float, float, float]
    quarter_turns: int
    axis: str
    size_multiple: int = 1

    def resized_shape(self, shape_zyx: Sequence[int]) -> tuple[int, int, int]:
        """Return the size (voxels, z y x) after resizing and before rotation."""
        multiple = self.size_multiple
        return tuple(
            max(multiple, round(size * scale / multiple) * multiple)
            for size, scale in zip(shape_zyx, self.scale_zyx)
        )

    def apply(self, volume: torch.Tensor, mode: str = "trilinear") -> torch.Tensor:
        """Transform `volume` [B, C, D, H, W].

        Args:
            volume: float maps, or bool/integer label maps with mode="nearest".
            mode: "trilinear" for images and probabilities, "nearest" for
                masks and labels (the output keeps the input's values and dtype).

        Returns:
            [B, C, D', H', W'] tensor of the input's dtype: resized with
            F.interpolate to resized_shape, then rotated with torch.rot90.
        """
        if volume.dim() != 5:
            raise ValueError(f"transform expects [B, C, D, H, W], found shape {list(volume.shape)}")
        if mode not in ("trilinear", "nearest"):
            raise ValueError(f"interpolation mode is {mode!r}, expected 'trilinear' or 'nearest'")
        size = self.resized_shape(volume.shape[2:])
        floating = volume if volume.is_floating_point() else volume.float()
        if tuple(floating.shape[2:]) != size:
            if mode == "trilinear":
                floating = F.interpolate(floating, size=size, mode="trilinear", align_corners=False)
            else:
                floating = F.interpolate(floating, size=size, mode="nearest-exact")
        rotated = torch.rot90(floating, self.quarter_turns, dims=ROTATION_PLANES[self.axis])
        if volume.is_floating_point():
            return rotated
        return rotated.round().to(volume.dtype)


def sample_transform(
    generator: torch.Generator,
    scale_range: Sequence[float] = (0.8, 1.2),
    rotations_deg: Sequence[int] = (90, 180, 270),
    size_multiple: int = 1,
) -> EquivariantTransform:
    """Draw a random transform: uniform per-axis scale factors, a rotation angle and an axis.

    Args:
        generator: CPU random generator, for reproducible draws.
        scale_range: [low, high] of the resize factor of each axis
            (training.er_scale_range).
        rotations_deg: angles to draw from, multiples of 90 degrees
            (training.er_rotations_deg).
        size_multiple: round the resized sizes to multiples of this number.

    Raises:
        ValueError: for an empty or invalid scale range or a rotation angle
            that is not a multiple of 90 degrees.
    """
    low, high = (float(value) for value in scale_range)
    if not 0 < low <= high:
        raise ValueError(
            f"training.er_scale_range is {list(scale_range)}, expected [low, high] with 0 < low <= high"
        )
    if len(rotations_deg) == 0 or any(int(angle) % 90 != 0 or angle != int(angle) for angle in rotations_deg):
        raise ValueError(
            f"training.er_rotations_deg is {list(rotations_deg)}, expected a non-empty list of "
            "multiples of 90 such as [90, 180, 270]"
        )
    if size_multiple < 1:
        raise ValueError(f"size_multiple is {size_multiple}, expected an integer >= 1")

    scales = low + (high - low) * torch.rand(3, generator=generator)
    angle_index = int(torch.randint(len(rotations_deg), (1,), generator=generator))
    axis_index = int(torch.randint(3, (1,), generator=generator))
    return EquivariantTransform(
        scale_zyx=tuple(float(scale) for scale in scales),
        quarter_turns=(int(rotations_deg[angle_index]) // 90) % 4,
        axis=("z", "y", "x")[axis_index],
        size_multiple=size_multiple,
    )
