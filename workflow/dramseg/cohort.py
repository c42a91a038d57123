"""Read and check the cohort table: one row per scan with its files, split and severity scores.

The table is read when Snakemake parses the workflow, so every problem stops the
run before any job starts, with the row, the column, the value and the fix.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from dramseg.anatomy import CONVENTIONS, SCORE_ORDER
from dramseg.errors import PipelineInputError

SCAN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("scan_id", "ct", "split") + tuple(f"score_{lobe}" for lobe in SCORE_ORDER)
OPTIONAL_COLUMNS = ("lobes", "lobe_convention", "corads", "reference")
LOBE_CONVENTIONS = tuple(CONVENTIONS) + ("custom",)
RECORD_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "cohort.schema.yaml"


def read_cohort_table(path: str | Path, default_convention: str = "diag", check_files: bool = True) -> list[dict]:
    """Read a cohort CSV and return one record per scan (the keys of record.json).

    Relative file paths in the table are taken relative to the table's folder.
    Raises PipelineInputError naming the row (1-based line in the file). The
    checked problems are duplicate or malformed scan ids, unknown splits,
    scores that are not integers 0-5 and training or validation scans without
    all five scores. A CO-RADS value outside 1-6, an unknown lobe convention
    and a missing file are errors too.
    """
    table_path = Path(path)
    if not table_path.is_file():
        raise PipelineInputError(
            f"cohort table {str(table_path)!r} not found. Set cohort.table in config.yaml to an existing CSV "
            "file, or to null to build the demo cohort"
        )
    try:
        frame = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise PipelineInputError(f"cohort table {str(table_path)!r} is not a readable CSV file: {error}") from error

    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise PipelineInputError(
            f"cohort table {str(table_path)!r} lacks the columns {missing}. Required columns: "
            f"{list(REQUIRED_COLUMNS)}; optional: {list(OPTIONAL_COLUMNS)}"
        )
    unknown = [column for column in frame.columns if column not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise PipelineInputError(
            f"cohort table {str(table_path)!r} has unknown columns {unknown}. Allowed: "
            f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    if frame.empty:
        raise PipelineInputError(f"cohort table {str(table_path)!r} has no rows")

    base = table_path.resolve().parent
    records = []
    seen: dict[str, int] = {}
    for position, row in frame.iterrows():
        line = int(position) + 2  # Line 1 is the header.
        record = _read_row(row, line, table_path, base, default_convention, check_files)
        if record["scan_id"] in seen:
            raise PipelineInputError(
                f"cohort table {str(table_path)!r} line {line}: scan_id {record['scan_id']!r} already appears on "
                f"line {seen[record['scan_id']]}. Scan ids must be unique"
            )
        seen[record["scan_id"]] = line
        records.append(record)
    validate_records(records, table_path)
    return records


def validate_records(records: list[dict], table_path: Path | str) -> None:
    """Check parsed records against the cohort JSON schema (a second line of defence)."""
    schema = yaml.safe_load(RECORD_SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for record in records:
        errors = list(validator.iter_errors(record))
        if errors:
            problems = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or 'row'}: {e.message}" for e in errors)
            raise PipelineInputError(f"cohort table {str(table_path)!r} (scan {record['scan_id']!r}): {problems}")


def _read_row(row, line: int, table_path: Path, base: Path, default_convention: str, check_files: bool) -> dict:
    where = f"cohort table {str(table_path)!r} line {line}"
    scan_id = row["scan_id"].strip()
    if not SCAN_ID_PATTERN.match(scan_id):
        raise PipelineInputError(
            f"{where}: scan_id {scan_id!r} is invalid. Use letters, digits, '_', '.' and '-' only, starting with "
            "a letter or digit (no spaces or path separators), because scan ids become folder names"
        )
    where = f"{where} (scan {scan_id!r})"

    split = row["split"].strip()
    if split not in SPLITS:
        raise PipelineInputError(f"{where}: split {split!r} is not one of {list(SPLITS)}")

    scores = {lobe: _read_score(row[f"score_{lobe}"], f"score_{lobe}", where) for lobe in SCORE_ORDER}
    scored_lobes = [lobe for lobe, score in scores.items() if score is not None]
    if scored_lobes and len(scored_lobes) < len(SCORE_ORDER):
        empty = [f"score_{lobe}" for lobe in SCORE_ORDER if scores[lobe] is None]
        raise PipelineInputError(f"{where}: scores are given for some lobes but {empty} are empty. Give all five or none")
    if not scored_lobes and split in ("train", "val"):
        raise PipelineInputError(
            f"{where}: a {split} scan needs the five severity scores score_lul ... score_rll (integers 0-5). "
            "Fill them in or move the scan to the test split"
        )

    corads = _read_integer(row.get("corads", ""), "corads", where, 1, 6)
    convention = (row.get("lobe_convention", "") or "").strip() or default_convention
    if convention not in LOBE_CONVENTIONS:
        raise PipelineInputError(f"{where}: lobe_convention {convention!r} is not one of {list(LOBE_CONVENTIONS)}")

    ct = _resolve(row["ct"], base)
    if ct is None:
        raise PipelineInputError(f"{where}: the ct column is empty. Give a NIfTI/MHA/NRRD file or a DICOM folder")
    lobes = _resolve(row.get("lobes", ""), base)
    reference = _resolve(row.get("reference", ""), base)
    if check_files:
        for column, value in (("ct", ct), ("lobes", lobes), ("reference", reference)):
            if value is not None and not Path(value).exists():
                raise PipelineInputError(f"{where}: {column} file {value!r} not found. Check the path (relative paths start at the table's folder)")

    return {
        "scan_id": scan_id,
        "split": split,
        "ct": ct,
        "lobes": lobes,
        "lobe_convention": convention,
        "scores": scores if scored_lobes else None,
        "corads": corads,
        "reference": reference,
        "dicom_series": None,
        "source": None,
    }


def _read_score(text: str, column: str, where: str) -> int | None:
    return _read_integer(text, column, where, 0, 5)


def _read_integer(text, column: str, where: str, low: int, high: int) -> int | None:
    text = (text or "").strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise PipelineInputError(f"{where}: {column} = {text!r} is not a number; expected an integer {low}-{high}") from None
    if not math.isfinite(value) or value != int(value):
        raise PipelineInputError(f"{where}: {column} = {text!r} is not an integer; expected an integer {low}-{high}")
    if not low <= value <= high:
        raise PipelineInputError(f"{where}: {column} = {text!r} is outside {low}-{high}; expected an integer {low}-{high}")
    return int(value)


def _resolve(text, base: Path) -> str | None:
    text = (text or "").strip()
    if text == "":
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    return str(path)
