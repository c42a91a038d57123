"""Write each scan's record.json, the one file per scan that later stages read its row from.

A record is written per scan (not one table for all) so that adding a scan or
editing one row reruns only that scan's jobs.
"""

from __future__ import annotations

import argparse
import json
import logging

from dramseg import io
from dramseg.anatomy import SCORE_ORDER
from dramseg.errors import PipelineInputError
from dramseg.settings import configure_logging

log = logging.getLogger(__name__)


def merge_demo_truth(record: dict, truth: dict) -> dict:
    """Fill a demo scan's scores and CO-RADS from the demo builder's truth.json."""
    merged = dict(record)
    scores = truth.get("scores")
    if scores is not None:
        missing = [lobe for lobe in SCORE_ORDER if lobe not in scores]
        if missing:
            raise PipelineInputError(f"scan {record['scan_id']!r}: demo truth.json lacks scores for {missing}")
        merged["scores"] = {lobe: int(scores[lobe]) for lobe in SCORE_ORDER}
    merged["corads"] = truth.get("corads")
    return merged


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a scan's record.json")
    parser.add_argument("--record", required=True, help="the scan's record as a JSON object")
    parser.add_argument("--truth", help="demo truth.json whose scores and CO-RADS fill the record")
    parser.add_argument("--out", required=True, help="record.json to write")
    arguments = parser.parse_args(argv)
    configure_logging()

    record = json.loads(arguments.record)
    if arguments.truth:
        record = merge_demo_truth(record, io.read_json(arguments.truth))
    io.write_json(record, arguments.out)
    log.info("scan %s: record written to %s (split %s)", record["scan_id"], arguments.out, record["split"])


if __name__ == "__main__":
    main()
