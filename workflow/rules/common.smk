# Configuration checks, the cohort, wildcard constraints and target functions.

import json
import os
import shlex
import sys
from pathlib import Path

# Shell commands call `python -m dramseg...`: make that the interpreter running
# Snakemake unless a conda environment of a rule puts its own first.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from dramseg import cohort as cohort_table
from dramseg.configuration import check_config
from dramseg.demo.plan import demo_paths, plan_cohort

check_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")


wildcard_constraints:
    scan=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    method=r"[A-Za-z0-9_]+",
    source=r"[A-Za-z0-9_]+",


def _demo_records():
    records = {}
    for planned in DEMO_PLAN:
        paths = demo_paths(config["demo"], planned["scan_id"])
        records[planned["scan_id"]] = {
            "scan_id": planned["scan_id"],
            "split": planned["split"],
            "ct": paths["ct"],
            "lobes": paths["lobes"],
            "lobe_convention": "diag",
            "scores": None,
            "corads": None,
            "reference": paths["reference"],
            "dicom_series": None,
            "source": planned["source"],
            "truth": paths.get("truth"),
        }
    return records


USE_DEMO = config["cohort"]["table"] is None
DEMO_PLAN = plan_cohort(config["demo"], Path.cwd()) if USE_DEMO else []
if USE_DEMO:
    SCANS = _demo_records()
else:
    SCANS = {
        record["scan_id"]: record
        for record in cohort_table.read_cohort_table(
            config["cohort"]["table"], config["cohort"]["default_lobe_convention"]
        )
    }
for _scan_id, _series in config["cohort"]["dicom_series"].items():
    if _scan_id not in SCANS:
        raise ValueError(f"cohort.dicom_series names scan {_scan_id!r}, which is not in the cohort")
    SCANS[_scan_id]["dicom_series"] = _series

APPLY_MODE = config["mode"] == "apply"



def scans_in_split(*splits):
    """Scan ids of the given splits, in cohort order."""
    return [scan for scan, record in SCANS.items() if record["split"] in splits]


def record_path(scan):
    return f"results/scans/{scan}/record.json"


def settings_json(*sections):
    """Shell-quoted JSON of the named config sections, passed to a stage as --settings."""
    return shlex.quote(json.dumps({section: config[section] for section in sections}, sort_keys=True))


def scan_input_files(wildcards):
    """The CT, lobe map and reference of a scan, so that a changed input file reruns its jobs."""
    record = SCANS[wildcards.scan]
    files = [record["ct"]]
    if record["lobes"]:
        files.append(record["lobes"])
    return files


def base_method(method):
    """The trained method behind an evaluated one ("dram-p" -> "dram")."""
    return method[:-2] if method.endswith("-p") else method


def evaluated_methods(table):
    return list(config["evaluation"][table])


def final_targets():
    if APPLY_MODE:
        return ["results/tables/severity.csv"]
    return [
        "results/tables/comparison.csv",
        "results/tables/ablation.csv",
        *report_targets(),
    ]


def _used_methods():
    """Methods that a table, figure or apply run needs, in config order.

    Methods in config but used nowhere are not trained, so a smaller
    --configfile can leave the default method list in place.
    """
    names = {base_method(name) for table in ("comparison", "ablation") for name in config["evaluation"][table]}
    if config["report"]["enabled"]:
        names.add(config["report"]["attention_method"])
        names.update(base_method(name) for name in config["report"]["confusion_methods"])
    return [name for name in config["methods"] if name in names]


TRAINED_METHODS = [] if APPLY_MODE else _used_methods()
