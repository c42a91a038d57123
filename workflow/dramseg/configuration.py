"""Check config.yaml against its JSON schema and the rules a schema cannot express.

Called when Snakemake parses the workflow, so an invalid value stops the run
before any job starts, naming the key, the value found and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from dramseg.intervals import parse_score_intervals


class ConfigError(ValueError):
    """An invalid config.yaml: the message lists every invalid key with its value."""


def check_config(config: dict, schema_path: str | Path) -> None:
    """Validate `config` in place against the schema, then check cross-key rules.

    Raises ConfigError listing each problem as `key: value found -> allowed`.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [_describe(error, schema) for error in sorted(validator.iter_errors(config), key=lambda e: list(e.path))]
    if not problems:
        problems = _cross_key_problems(config)
    if problems:
        listing = "\n  ".join(problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n  {listing}")


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{key}: {error.message}; allowed keys: {allowed}"
    description = error.schema.get("description", "") if isinstance(error.schema, dict) else ""
    allowed = f" ({description})" if description else ""
    return f"{key}: {error.message}{allowed}"


def _cross_key_problems(config: dict) -> list[str]:
    problems = []
    depth = config["model"]["depth"]
    divisor = 2**depth
    for axis, size in zip("zyx", config["chunks"]["shape"]):
        if size % divisor:
            suggestion = max(divisor, round(size / divisor) * divisor)
            problems.append(
                f"chunks.shape: size {size} along {axis} is not divisible by {divisor} (2**model.depth with "
                f"depth {depth}); use a multiple of {divisor} such as {suggestion}"
            )

    try:
        parse_score_intervals(config["chunks"]["score_intervals"])
    except ValueError as error:
        problems.append(f"chunks.score_intervals: {error}")

    low, high = config["chunks"]["hu_window"]
    if low >= high:
        problems.append(f"chunks.hu_window: [{low}, {high}] must have low < high")
    scale_low, scale_high = config["training"]["er_scale_range"]
    if not 0 < scale_low <= scale_high:
        problems.append(f"training.er_scale_range: [{scale_low}, {scale_high}] must satisfy 0 < low <= high")

    methods = config["methods"]
    for table in ("comparison", "ablation"):
        for name in config["evaluation"][table]:
            base = name[:-2] if name.endswith("-p") else name
            if base not in methods and name not in config["evaluation"]["external"]:
                problems.append(
                    f"evaluation.{table}: method {name!r} is neither in methods ({sorted(methods)}) nor in "
                    "evaluation.external"
                )

    if config["mode"] == "apply":
        if not config["apply"]["checkpoint"]:
            problems.append("apply.checkpoint: mode is 'apply' but no checkpoint is given; set the path of a model.pt")
        if config["cohort"]["table"] is None:
            problems.append("cohort.table: mode is 'apply' but no cohort table is given; the demo cohort is for 'reproduce'")
    return problems
