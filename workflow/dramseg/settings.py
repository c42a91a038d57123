"""Settings passed from Snakemake rules to stage entry points, and their hashes."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys


def settings_hash(settings) -> str:
    """Return a 16-hex-digit SHA-256 of the settings in canonical JSON form."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_settings(text: str) -> dict:
    """Parse the `--settings` JSON object a rule passes to an entry point."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--settings is not valid JSON ({error}): {text[:200]!r}") from error
    if not isinstance(settings, dict):
        raise SystemExit(f"--settings must be a JSON object, found {type(settings).__name__}")
    return settings


def add_settings_argument(parser: argparse.ArgumentParser) -> None:
    """Add the `--settings JSON` option that every stage entry point takes."""
    parser.add_argument(
        "--settings",
        type=parse_settings,
        default={},
        help="JSON object with the config sections this stage uses (written by the rule)",
    )


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr with time stamps; rules redirect stderr to the job's log file."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        force=True,
    )
