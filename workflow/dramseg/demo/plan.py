"""Plan of the demo cohort: scan ids, sources, variants and splits, known before anything is built.

Standard library only, because Snakemake calls it while parsing the workflow.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

LOGGER = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
REAL_TEST = "real_test"


def variant_seed(base_seed: int, scan_id: str) -> int:
    """Return a 32-bit seed derived from the config seed and the scan id, stable across runs."""
    digest = hashlib.sha256(f"{int(base_seed)}:{scan_id}".encode()).hexdigest()
    return int(digest[:8], 16)


def source_path(demo_config: dict, source: dict, base_dir: Path) -> Path:
    """Return the input file or folder of a source; a wheel source's path is its download."""
    if source["kind"] == "wheel":
        relative = Path(demo_config["download_dir"]) / demo_config["wheel"]["filename"]
    else:
        relative = Path(source["path"])
    return relative if relative.is_absolute() else Path(base_dir) / relative


def available_sources(demo_config: dict, base_dir: Path) -> list[dict]:
    """Return the configured sources that can be built: wheel sources always, others when their path exists."""
    present = []
    for source in demo_config["sources"]:
        if source["kind"] not in ("wheel", "file", "dicom"):
            raise ValueError(f"demo source {source['name']!r} has kind {source['kind']!r}; expected wheel, file or dicom")
        if source["role"] not in (SYNTHETIC, REAL_TEST):
            raise ValueError(f"demo source {source['name']!r} has role {source['role']!r}; expected synthetic or real_test")
        if source["kind"] != "wheel" and not source_path(demo_config, source, base_dir).exists():
            LOGGER.warning(
                "demo source %r skipped: %s does not exist", source["name"], source_path(demo_config, source, base_dir)
            )
            continue
        present.append(source)
    return present


def plan_cohort(demo_config: dict, base_dir: Path) -> list[dict]:
    """List the scans of the demo cohort.

    Each entry has scan_id (`{source}_v{variant:02d}` for synthetic variants,
    `{source}` for a real test scan), source, variant, split, role, kind and
    path (the source's input, as given in the config or the download path).

    Splits: when at least two synthetic sources are present, every variant of
    a source in `test_sources` is test, so test anatomy is unseen in training.
    Otherwise the last `test_fraction` of all variants are test, leaving at
    least two. Of the remaining variants the last `val_fraction` are val and
    the rest train, with at least one train and one val scan when there are
    two or more.
    Real test sources always go to test.
    """
    sources = available_sources(demo_config, base_dir)
    synthetic = [source for source in sources if source["role"] == SYNTHETIC]
    names = {source["name"] for source in synthetic}
    held_out = set(demo_config.get("test_sources") or []) & names
    use_held_out = len(synthetic) >= 2 and held_out and held_out != names

    variants = [(source, variant) for source in synthetic for variant in range(int(source["variants"]))]
    if use_held_out:
        test = [item for item in variants if item[0]["name"] in held_out]
        rest = [item for item in variants if item[0]["name"] not in held_out]
    else:
        test_count = _share(len(variants), float(demo_config["test_fraction"]), keep=2)
        test = variants[len(variants) - test_count :]
        rest = variants[: len(variants) - test_count]
    val_count = _share(len(rest), float(demo_config["val_fraction"]), keep=1)
    val = rest[len(rest) - val_count :]
    splits = {id(item): "test" for item in test} | {id(item): "val" for item in val}

    plan = []
    for item in variants:
        source, variant = item
        plan.append(
            _entry(demo_config, source, f"{source['name']}_v{variant:02d}", variant, splits.get(id(item), "train"))
        )
    for source in sources:
        if source["role"] == REAL_TEST:
            plan.append(_entry(demo_config, source, source["name"], 0, "test"))
    return plan


def _share(total: int, fraction: float, keep: int) -> int:
    """Return round(fraction * total), at least 1 when fraction > 0, leaving `keep` items when total allows."""
    if total <= 0 or fraction <= 0:
        return 0
    count = max(1, int(round(fraction * total)))
    return max(0, min(count, total - keep))


def _entry(demo_config, source, scan_id, variant, split) -> dict:
    return {
        "scan_id": scan_id,
        "source": source["name"],
        "variant": variant,
        "split": split,
        "role": source["role"],
        "kind": source["kind"],
        # Relative to the working directory, as in the config.
        "path": str(source_path(demo_config, source, Path("."))),
    }


def demo_paths(demo_config: dict, scan_id: str) -> dict:
    """Return the paths (strings) of a planned demo scan: ct, lobes, reference and truth.

    A real test scan keeps its own CT (the source's file or DICOM folder), gets
    the approximate lobe map of its source, and has neither reference nor truth (None).
    """
    output_dir = Path(demo_config["output_dir"])
    for source in demo_config["sources"]:
        if source["role"] == REAL_TEST and source["name"] == scan_id:
            return {
                "ct": str(source["path"]),
                "lobes": str(output_dir / "sources" / scan_id / "lobes.nii.gz"),
                "reference": None,
                "truth": None,
            }
    scan_dir = output_dir / "scans" / scan_id
    return {
        "ct": str(scan_dir / "ct.nii.gz"),
        "lobes": str(scan_dir / "lobes.nii.gz"),
        "reference": str(scan_dir / "reference.nii.gz"),
        "truth": str(scan_dir / "truth.json"),
    }
