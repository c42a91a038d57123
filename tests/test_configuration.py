import copy

import pytest
import yaml

from dramseg.configuration import ConfigError, check_config


@pytest.fixture(scope="module")
def default_config(repository):
    return yaml.safe_load((repository / "config.yaml").read_text())


@pytest.fixture(scope="module")
def schema(repository):
    return repository / "workflow" / "schemas" / "config.schema.yaml"


def test_default_config_valid(default_config, schema):
    check_config(copy.deepcopy(default_config), schema)


def test_paper_preset_valid(default_config, schema, repository):
    preset = yaml.safe_load((repository / "resources" / "config-paper.yaml").read_text())
    merged = copy.deepcopy(default_config)
    for key, value in preset.items():
        if isinstance(value, dict):
            merged[key].update(value)
        else:
            merged[key] = value
    check_config(merged, schema)


def change(config, dotted, value):
    changed = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    target = changed
    for part in parents:
        target = target[part]
    target[last] = value
    return changed


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("device", "gpu", "device: 'gpu' is not one of"),
        ("seed", "zero", "seed: 'zero' is not of type 'integer'"),
        ("model.depth", 0, "model.depth: 0 is less than the minimum"),
        ("model.norm", "layer", "model.norm: 'layer' is not one of"),
        ("training.epochs", 2.5, "training.epochs: 2.5 is not of type 'integer'"),
        ("resample.spacing_mm", -1, "resample.spacing_mm"),
        ("chunks.shape", [30, 32, 32], "size 30 along z is not divisible by 8"),
        ("evaluation.comparison", ["dram", "unknown-p"], "method 'unknown-p' is neither"),
        ("cohort.lobes_pattern", "lobes.nii.gz", "cohort.lobes_pattern"),
        ("mode", "apply", "apply.checkpoint"),
    ],
)
def test_invalid_value_names_key(default_config, schema, key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace("[", "\\[")):
        check_config(change(default_config, key, value), schema)


def test_unknown_key_lists_allowed(default_config, schema):
    changed = copy.deepcopy(default_config)
    changed["model"]["widht"] = 3
    with pytest.raises(ConfigError, match="'widht' was unexpected.*allowed keys"):
        check_config(changed, schema)


def test_unknown_top_level_key(default_config, schema):
    changed = copy.deepcopy(default_config)
    changed["epochs"] = 3
    with pytest.raises(ConfigError, match="'epochs' was unexpected"):
        check_config(changed, schema)
