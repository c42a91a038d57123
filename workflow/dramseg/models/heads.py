"""Networks built on the 3D U-Net: the dRAM regression network and the CAM classifiers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dramseg.models.attention import AttentionRefinement
from dramseg.models.blocks import init_kaiming
from dramseg.models.unet import UNet3D

# Channel order of the regression output.
BACKGROUND, VESSEL, LESION = 0, 1, 2
NUM_REGRESSION_CLASSES = 3


def masked_channel_mean(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Average `features` [B, C, D, H, W] with voxel weights [B, 1, D, H, W] in [0, 1].

    Returns [B, C]. A sample whose weights are all zero gets zeros, not NaN.
    """
    total = weights.sum(dim=(2, 3, 4))
    weighted = (features * weights).sum(dim=(2, 3, 4))
    return weighted / total.clamp(min=torch.finfo(features.dtype).tiny)


class RegressionNet(nn.Module):
    """U-Net with a 1x1x1 convolution and softmax over background, vessel and lesion.

    The lesion channel is the dense regression activation map (dRAM). With
    attention=True an AttentionRefinement module refines the logits using
    the image and the first two encoder levels, which requires depth >= 2.
    """

    def __init__(
        self,
        base_width: int = 32,
        depth: int = 3,
        norm: str = "batch",
        activation: str = "relu",
        attention: bool = False,
        attention_channels: int = 8,
        in_channels: int = 1,
    ):
        super().__init__()
        self.unet = UNet3D(in_channels, base_width, depth, norm, activation)
        self.head = nn.Conv3d(base_width, NUM_REGRESSION_CLASSES, kernel_size=1)
        init_kaiming(self.head, activation)
        self.attention = None
        if attention:
            if depth < 2:
                raise ValueError(
                    f"the attention module uses the first two encoder levels, but model.depth is {depth}; "
                    "set model.depth >= 2 or disable attention for this method"
                )
            self.attention = AttentionRefinement(
                image_channels=in_channels,
                encoder_channels=(self.unet.widths[0], self.unet.widths[1]),
                channels=attention_channels,
                num_classes=NUM_REGRESSION_CLASSES,
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the dRAM of chunks x [B, in_channels, D, H, W].

        Returns a dict with
            logits: [B, 3, D, H, W], refined by attention when it is enabled;
            probabilities: softmax of logits over the 3 channels, in float32
                also under autocast;
            logits_before_attention, probabilities_before_attention: the head's
                output before refinement (only when attention is enabled).
        """
        features = self.unet(x)
        logits = self.head(features.dense)
        if self.attention is None:
            return {"logits": logits, "probabilities": torch.softmax(logits.float(), dim=1)}
        refined = self.attention(x, features.encoder, logits)
        return {
            "logits": refined,
            "probabilities": torch.softmax(refined.float(), dim=1),
            "logits_before_attention": logits,
            "probabilities_before_attention": torch.softmax(logits.float(), dim=1),
        }


class ClassificationNet(nn.Module):
    """Lobe classifier (score > 0) whose class activation maps serve as segmentations.

    dense=True (dCAM): the dense U-Net features are averaged inside the lobe
    mask and a linear layer gives the 2 class logits. dense=False (CAM): the
    up-sampling path is not built, and the bottom features at 1 / 2**depth
    resolution are averaged with the down-sampled lobe mask as weights (the
    fraction of each low-resolution cell that lies inside the lobe).

    The CAM of class k is sum_c w_kc * f_c on the feature grid, so its
    weighted mean inside the lobe plus the bias b_k equals logit k. The CAM
    baseline resizes it trilinearly to the input size.
    """

    def __init__(
        self,
        base_width: int = 32,
        depth: int = 3,
        norm: str = "batch",
        activation: str = "relu",
        dense: bool = True,
        in_channels: int = 1,
    ):
        super().__init__()
        self.dense = dense
        self.unet = UNet3D(in_channels, base_width, depth, norm, activation, decoder=dense)
        feature_channels = base_width if dense else self.unet.bottom_channels
        self.classifier = nn.Linear(feature_channels, 2)
        init_kaiming(self.classifier, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classify chunks x [B, in_channels, D, H, W] inside lobe masks [B, D, H, W] or [B, 1, D, H, W].

        Returns a dict with
            logits: [B, 2];
            cam: [B, 2, D, H, W] class activation maps at the input size;
            cam_native: [B, 2, ...] the maps on the feature grid (before resizing);
            pooling_weights: [B, 1, ...] the lobe mask on the feature grid.
        """
        if mask.dim() == 4:
            mask = mask.unsqueeze(1)
        mask = mask.to(x.dtype)
        features = self.unet(x)
        if self.dense:
            feature_map = features.dense
            weights = mask
        else:
            feature_map = features.bottom
            weights = F.adaptive_avg_pool3d(mask, feature_map.shape[2:])

        logits = self.classifier(masked_channel_mean(feature_map, weights))
        cam_native = torch.einsum("kc,bczyx->bkzyx", self.classifier.weight, feature_map)
        if cam_native.shape[2:] == x.shape[2:]:
            cam = cam_native
        else:
            cam = F.interpolate(cam_native, size=x.shape[2:], mode="trilinear", align_corners=False)
        return {"logits": logits, "cam": cam, "cam_native": cam_native, "pooling_weights": weights}

    def count_forward_macs(self, inputs, output) -> int:
        """Count the multiply-adds of the CAM product (2 classes x channels per feature voxel).

        The linear layer is counted by its own hook; the pooling and the
        trilinear resizing are not counted.
        """
        cam_native = output["cam_native"]
        batch = cam_native.shape[0]
        voxels = cam_native.shape[2:].numel()
        return int(batch * voxels * self.classifier.weight.numel())
