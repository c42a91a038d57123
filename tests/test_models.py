"""Tests of the U-Net, its blocks, the regression and classification networks and build_model."""

import pytest
import torch
from torch import nn

from dramseg.losses import interval_loss, lobe_mean
from dramseg.models import (
    ClassificationNet,
    ConvBlock,
    RegressionNet,
    UNet3D,
    build_model,
    check_chunk_shape,
    make_activation,
    make_norm,
)

SETTINGS = {"base_width": 4, "depth": 3, "norm": "batch", "activation": "relu", "attention_channels": 4}


@pytest.mark.parametrize(
    "kind, expected_type",
    [
        ("batch", nn.BatchNorm3d),
        ("instance", nn.InstanceNorm3d),
        ("group", nn.GroupNorm),
        ("none", nn.Identity),
    ],
)
def test_make_norm_kinds(kind, expected_type):
    assert isinstance(make_norm(kind, 12), expected_type)


def test_make_norm_group_divides_channels():
    norm = make_norm("group", 12)
    assert 12 % norm.num_groups == 0


@pytest.mark.parametrize(
    "kind, expected_type",
    [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("elu", nn.ELU)],
)
def test_make_activation_kinds(kind, expected_type):
    assert isinstance(make_activation(kind), expected_type)


def test_make_norm_unknown_lists_kinds():
    with pytest.raises(ValueError, match="batch, instance, group, none"):
        make_norm("layer", 4)


def test_make_activation_unknown_lists_kinds():
    with pytest.raises(ValueError, match="relu, leaky_relu, elu"):
        make_activation("gelu")


def test_conv_block_kaiming_std():
    torch.manual_seed(0)
    block = ConvBlock(16, 32, "batch", "relu")
    conv = block[0]
    expected_std = (2.0 / (16 * 27)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


def test_conv_block_keeps_spatial_size():
    block = ConvBlock(2, 5, "instance", "elu")
    output = block(torch.rand(1, 2, 6, 5, 4))
    assert output.shape == (1, 5, 6, 5, 4)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_output_shapes(depth):
    base = 4
    net = UNet3D(in_channels=1, base_width=base, depth=depth)
    output = net(torch.rand(2, 1, 16, 16, 8))
    assert output.dense.shape == (2, base, 16, 16, 8)
    assert len(output.encoder) == depth
    for level, features in enumerate(output.encoder):
        factor = 2**level
        assert features.shape == (2, base * factor, 16 // factor, 16 // factor, 8 // factor)
    factor = 2**depth
    assert output.bottom.shape == (2, base * factor, 16 // factor, 16 // factor, 8 // factor)


def test_unet_without_decoder_has_no_dense():
    net = UNet3D(base_width=4, depth=2, decoder=False)
    output = net(torch.rand(1, 1, 8, 8, 8))
    assert output.dense is None
    assert len(net.decoder_blocks) == 0


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"depth": 0}, "model.depth is 0"),
        ({"base_width": 0}, "model.base_width is 0"),
        ({"depth": 2.5}, "model.depth is 2.5"),
        ({"norm": "layer"}, "model.norm is 'layer', expected one of batch, instance, group, none"),
        ({"activation": "gelu"}, "model.activation is 'gelu', expected one of relu, leaky_relu, elu"),
    ],
)
def test_unet_invalid_settings(arguments, message):
    with pytest.raises(ValueError, match=message):
        UNet3D(**arguments)


def test_check_chunk_shape_message():
    expected = r"chunk size 30 is not divisible by 8 \(2\*\*depth\); use a multiple of 8 such as 32"
    with pytest.raises(ValueError, match=expected):
        check_chunk_shape((32, 30, 32), depth=3)


@pytest.mark.parametrize("size, message", [(4, "chunk size 4 is not divisible by 8"), (0, "chunk size 0 is invalid")])
def test_check_chunk_shape_small_sizes(size, message):
    with pytest.raises(ValueError, match=message):
        check_chunk_shape((32, 32, size), depth=3)


def test_check_chunk_shape_accepts_multiples():
    check_chunk_shape((16, 24, 8), depth=3)


def test_unet_rejects_indivisible_input():
    net = UNet3D(base_width=2, depth=3)
    with pytest.raises(ValueError, match="chunk size 12 is not divisible by 8"):
        net(torch.rand(1, 1, 16, 12, 16))


@pytest.mark.parametrize("attention", [False, True])
def test_regression_net_outputs(attention):
    net = RegressionNet(base_width=4, depth=2, attention=attention, attention_channels=4)
    output = net(torch.rand(2, 1, 8, 8, 8))
    assert output["logits"].shape == (2, 3, 8, 8, 8)
    assert torch.allclose(output["probabilities"].sum(dim=1), torch.ones(2, 8, 8, 8), atol=1e-6)
    assert ("probabilities_before_attention" in output) == attention


def test_regression_net_attention_needs_two_levels():
    with pytest.raises(ValueError, match="model.depth is 1"):
        RegressionNet(base_width=4, depth=1, attention=True)


@pytest.mark.parametrize("dense", [True, False])
def test_classification_cam_decomposes_logits(dense):
    torch.manual_seed(1)
    net = ClassificationNet(base_width=4, depth=2, dense=dense).eval()
    x = torch.rand(2, 1, 8, 8, 8)
    mask = torch.zeros(2, 8, 8, 8)
    mask[0, 1:6, 2:7, 0:5] = 1
    mask[1, :, :, 3:] = 1
    with torch.no_grad():
        output = net(x, mask)
    weights = output["pooling_weights"]
    cam_mean = (output["cam_native"] * weights).sum(dim=(2, 3, 4)) / weights.sum(dim=(2, 3, 4))
    assert torch.allclose(cam_mean + net.classifier.bias, output["logits"], atol=1e-5)


@pytest.mark.parametrize("dense, native_size", [(True, 16), (False, 4)])
def test_classification_cam_shapes(dense, native_size):
    net = ClassificationNet(base_width=4, depth=2, dense=dense)
    output = net(torch.rand(1, 1, 16, 16, 16), torch.ones(1, 16, 16, 16))
    assert output["logits"].shape == (1, 2)
    assert output["cam"].shape == (1, 2, 16, 16, 16)
    assert output["cam_native"].shape == (1, 2, native_size, native_size, native_size)


def test_classification_empty_mask_is_finite():
    net = ClassificationNet(base_width=4, depth=2, dense=True)
    output = net(torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 8, 8, 8))
    assert torch.isfinite(output["logits"]).all()


@pytest.mark.parametrize(
    "kind, attention, expected_type",
    [
        ("regression", False, RegressionNet),
        ("regression", True, RegressionNet),
        ("supervised", False, RegressionNet),
        ("dcam", False, ClassificationNet),
        ("cam", False, ClassificationNet),
    ],
)
def test_build_model_kinds(kind, attention, expected_type):
    model = build_model(kind, SETTINGS, attention=attention)
    assert isinstance(model, expected_type)


def test_build_model_attention_flag():
    assert build_model("regression", SETTINGS, attention=True).attention is not None


def test_build_model_cam_skips_decoder():
    assert build_model("cam", SETTINGS).unet.has_decoder is False


@pytest.mark.parametrize(
    "kind, settings, attention, message",
    [
        ("unet", SETTINGS, False, "method kind is 'unet'"),
        ("regression", {"base_width": 4}, False, "lacks depth, norm, activation, attention_channels"),
        ("dcam", SETTINGS, True, "attention is only available for kind 'regression'"),
        ("supervised", SETTINGS, True, "attention is only available for kind 'regression'"),
    ],
)
def test_build_model_invalid(kind, settings, attention, message):
    with pytest.raises(ValueError, match=message):
        build_model(kind, settings, attention=attention)


def test_regression_net_trains_interval_loss():
    torch.manual_seed(0)
    net = RegressionNet(base_width=4, depth=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.rand(2, 1, 32, 32, 32)
    mask = torch.zeros(2, 32, 32, 32, dtype=torch.bool)
    mask[:, 4:28, 4:28, 4:28] = True
    low = torch.tensor([0.6, 0.7])
    high = torch.tensor([0.7, 0.8])

    losses = []
    for _ in range(4):
        lesion = net(x)["probabilities"][:, 2]
        loss = interval_loss(lobe_mean(lesion, mask), low, high).mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # losses[3] is the loss after three Adam steps.
    assert losses[3] < losses[0]


def test_regression_probabilities_float32_under_autocast():
    net = RegressionNet(base_width=4, depth=2, attention=True, attention_channels=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = net(torch.rand(1, 1, 8, 8, 8))
    assert output["probabilities"].dtype == torch.float32
    assert output["probabilities_before_attention"].dtype == torch.float32
