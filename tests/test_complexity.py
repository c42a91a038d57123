"""Tests of the parameter and multiply-add counts."""

import json

import pytest
import torch
from torch import nn

from dramseg.complexity import complexity_report, count_macs, count_parameters, main
from dramseg.models import build_model

SETTINGS = {"base_width": 4, "depth": 3, "norm": "batch", "activation": "relu", "attention_channels": 4}


class ConvThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, kernel_size=3, padding=1)
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(self.conv(x).mean(dim=(2, 3, 4)))


def test_count_parameters_small_model():
    # Conv3d: 4 * 2 * 27 weights + 4 biases; Linear: 4 * 3 weights + 3 biases.
    assert count_parameters(ConvThenLinear()) == 4 * 2 * 27 + 4 + 4 * 3 + 3


def test_count_macs_conv_and_linear():
    macs = count_macs(ConvThenLinear(), (4, 4, 4), batch=1, in_channels=2)
    assert macs == 64 * 4 * 2 * 27 + 4 * 3


def test_count_macs_scales_with_batch():
    model = ConvThenLinear()
    assert count_macs(model, (4, 4, 4), batch=3, in_channels=2) == 3 * count_macs(model, (4, 4, 4), in_channels=2)


def test_count_macs_restores_training_mode():
    model = ConvThenLinear().train()
    count_macs(model, (4, 4, 4), in_channels=2)
    assert model.training


def test_count_macs_grouped_conv():
    model = nn.Conv3d(4, 8, kernel_size=1, groups=2)
    assert count_macs(model, (2, 2, 2), in_channels=4) == 8 * 8 * 2


def test_attention_macs_counted_explicitly():
    shape_zyx = (16, 16, 16)
    voxels = 16**3
    channels = SETTINGS["attention_channels"]
    base = SETTINGS["base_width"]
    plain = count_macs(build_model("regression", SETTINGS, attention=False), shape_zyx)
    with_attention = count_macs(build_model("regression", SETTINGS, attention=True), shape_zyx)
    guide = 1 + 2 * channels
    expected_extra = (
        voxels * channels * base  # squeeze of level 1 (full resolution)
        + voxels // 8 * channels * 2 * base  # squeeze of level 2 (half resolution)
        + 2 * voxels * channels * guide  # theta and phi
        + voxels * channels * 3  # g
        + voxels * 3 * channels  # r
        + 2 * 18 * channels * voxels  # affinities and aggregation
    )
    assert with_attention - plain == expected_extra


def test_dcam_macs_include_cam_product():
    shape_zyx = (16, 16, 16)
    base = SETTINGS["base_width"]
    regression = count_macs(build_model("regression", SETTINGS), shape_zyx)
    dcam = count_macs(build_model("dcam", SETTINGS), shape_zyx, with_mask=True)
    # Same U-Net. Regression: 1x1x1 head to 3 classes. dCAM: linear layer and CAM product.
    head = 16**3 * 3 * base
    classifier = base * 2 + 16**3 * 2 * base
    assert dcam - regression == classifier - head


@pytest.mark.parametrize("er, forward_passes", [(False, 1), (True, 2)])
def test_complexity_report_train_macs(er, forward_passes):
    report = complexity_report("regression", SETTINGS, attention=False, er=er, chunk_shape_zyx=(16, 16, 16))
    assert report["macs_train_forward"] == forward_passes * report["macs_test"]
    assert report["macs_train"] == 3 * report["macs_train_forward"]


def test_complexity_report_params_match_model():
    report = complexity_report("cam", SETTINGS, attention=False, er=False, chunk_shape_zyx=(16, 16, 16))
    assert report["params"] == count_parameters(build_model("cam", SETTINGS))


def test_cam_cheaper_than_dcam():
    cam = complexity_report("cam", SETTINGS, attention=False, er=False, chunk_shape_zyx=(16, 16, 16))
    dcam = complexity_report("dcam", SETTINGS, attention=False, er=False, chunk_shape_zyx=(16, 16, 16))
    assert cam["macs_test"] < dcam["macs_test"]


def test_complexity_report_rejects_chunk():
    with pytest.raises(ValueError, match="chunk size 20 is not divisible by 8"):
        complexity_report("dcam", SETTINGS, attention=False, er=False, chunk_shape_zyx=(16, 20, 16))


def test_main_writes_report(tmp_path):
    settings = {
        "methods": {"proposed": {"kind": "regression", "er": True, "ref": True, "attention": True}},
        "model": SETTINGS,
        "chunks": {"shape": [16, 16, 16]},
    }
    out_path = tmp_path / "complexity" / "proposed.json"
    main(["--method", "proposed", "--out-json", str(out_path), "--settings", json.dumps(settings)])
    report = json.loads(out_path.read_text())
    assert report["method"] == "proposed"
    assert report["macs_train_forward"] == 2 * report["macs_test"]


def test_main_unknown_method(tmp_path):
    settings = {"methods": {}, "model": SETTINGS, "chunks": {"shape": [16, 16, 16]}}
    with pytest.raises(SystemExit):
        main(["--method", "nope", "--out-json", str(tmp_path / "x.json"), "--settings", json.dumps(settings)])


def test_count_macs_input_dtype_follows_model():
    model = ConvThenLinear().to(torch.float64)
    assert count_macs(model, (2, 2, 2), in_channels=2) == 8 * 4 * 2 * 27 + 4 * 3
