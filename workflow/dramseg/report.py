"""Figures and the cohort table of the report stage.

Subcommands (each writes one file or one table and its figure):
  cohort     results/tables/cohort.csv and results/figures/cohort.png (Table I of Xie et al.)
  coronal    results/figures/coronal/{scan}.png: CT, each method's probability map, reference contour
  attention  results/figures/attention.png: lobe-chunk maps before and after the attention module
  dsc        results/figures/dsc.png: DSC per method over the test scans
  subtypes   results/figures/dsc_subtypes.png: DSC against the share of each lesion subtype
  confusion  results/figures/confusion_{method}.png: reference against predicted lobe scores
  training   results/figures/training.png: training and validation loss per epoch

The drawing code lives in dramseg.figures; this module parses options, reads and writes.
"""

from __future__ import annotations

import argparse
import logging

from dramseg import io, settings as settings_module
from dramseg.figures import attention, cohort, coronal, scores, training
from dramseg.figures.common import DEMO_NOTE, is_demo
from dramseg.intervals import parse_score_intervals

LOG = logging.getLogger("dramseg.report")


def parse_pairs(pairs, option: str) -> dict[str, str]:
    """Parse NAME=PATH arguments into an ordered dict; raise SystemExit on a malformed or repeated name."""
    parsed = {}
    for pair in pairs:
        name, separator, path = pair.partition("=")
        if not separator or not name or not path:
            raise SystemExit(f"{option} expects NAME=PATH, found {pair!r}")
        if name in parsed:
            raise SystemExit(f"{option} names {name!r} twice")
        parsed[name] = path
    return parsed


def top_score(settings: dict) -> int:
    """Return the highest lobe severity score of chunks.score_intervals."""
    return max(parse_score_intervals(settings["chunks"]["score_intervals"]))


def demo_note(record_paths) -> str | None:
    """Return DEMO_NOTE when any of the records belongs to the demo cohort."""
    return DEMO_NOTE if is_demo(io.read_json(path) for path in record_paths) else None


def run_cohort(arguments) -> None:
    table = cohort.write_cohort(
        arguments.records, arguments.out_table, arguments.out_figure, top_score(arguments.settings),
        int(arguments.settings["report"]["dpi"]),
    )
    LOG.info("cohort of %d scans written to %s and %s", int(table["scans"].iloc[-1]), arguments.out_table, arguments.out_figure)


def run_coronal(arguments) -> None:
    record = io.read_json(arguments.record)
    view = coronal.write_coronal(
        record,
        arguments.lobes,
        parse_pairs(arguments.probability, "--probability"),
        arguments.settings["report"],
        arguments.settings["resample"],
        arguments.out,
    )
    LOG.info("scan %s: coronal slice y = %d written to %s", record["scan_id"], view.slice_index_y, arguments.out)


def run_attention(arguments) -> None:
    report_settings = arguments.settings["report"]
    rows = attention.write_attention(
        arguments.model,
        parse_pairs(arguments.store, "--store"),
        arguments.settings,
        demo_note(arguments.records),
        arguments.out,
        int(report_settings["dpi"]),
    )
    LOG.info("attention maps of %s written to %s", [(row.scan_id, row.lobe) for row in rows], arguments.out)


def run_dsc(arguments) -> None:
    frame = scores.dsc_frame(scores.read_results(arguments.results))
    scores.plot_dsc(frame, arguments.methods, demo_note(arguments.records), arguments.out, int(arguments.settings["report"]["dpi"]))
    LOG.info("DSC of %d method(s) written to %s", len(arguments.methods), arguments.out)


def run_subtypes(arguments) -> None:
    results = scores.read_results(arguments.results)
    shares = {}
    for path in arguments.records:
        record = io.read_json(path)
        if record.get("reference"):
            shares[record["scan_id"]] = scores.subtype_shares(record["scan_id"], record["reference"])
    note = demo_note(arguments.records)
    scores.plot_dsc_subtypes(scores.dsc_frame(results), shares, arguments.methods, note, arguments.out,
                             int(arguments.settings["report"]["dpi"]))
    LOG.info("DSC against subtype shares of %d scan(s) written to %s", len(shares), arguments.out)


def run_confusion(arguments) -> None:
    results = [result for result in scores.read_results(arguments.results) if result["method"] == arguments.method]
    counts = scores.confusion_counts(results, top_score(arguments.settings))
    scores.plot_confusion(counts, arguments.method, demo_note(arguments.records), arguments.out,
                          int(arguments.settings["report"]["dpi"]))
    LOG.info("method %s: confusion matrix of %d lobes written to %s", arguments.method, int(counts.sum()), arguments.out)


def run_training(arguments) -> None:
    histories = {method: training.read_history(method, path) for method, path in parse_pairs(arguments.history, "--history").items()}
    report_settings = arguments.settings["report"]
    training.plot_training(histories, bool(report_settings["training_log_scale"]), demo_note(arguments.records), arguments.out,
                           int(report_settings["dpi"]))
    LOG.info("training curves of %d method(s) written to %s", len(histories), arguments.out)


COMMANDS = {
    "cohort": run_cohort,
    "coronal": run_coronal,
    "attention": run_attention,
    "dsc": run_dsc,
    "subtypes": run_subtypes,
    "confusion": run_confusion,
    "training": run_training,
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per figure."""
    parser = argparse.ArgumentParser(prog="python -m dramseg.report", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("cohort", help="cohort table and bar chart")
    command.add_argument("--records", nargs="+", required=True, help="record.json of every scan")
    command.add_argument("--out-table", required=True, help="cohort CSV")
    command.add_argument("--out-figure", required=True, help="cohort PNG")
    settings_module.add_settings_argument(command)

    command = commands.add_parser("coronal", help="coronal view of one test scan")
    command.add_argument("--record", required=True, help="the scan's record.json")
    command.add_argument("--lobes", required=True, help="lobe map on the CT grid (results/lobes/{scan}/lobes.nii.gz)")
    command.add_argument("--probability", nargs="*", default=[], help="METHOD=PATH of each probability map, in column order")
    command.add_argument("--out", required=True)
    settings_module.add_settings_argument(command)

    command = commands.add_parser("attention", help="lobe-chunk maps before and after attention")
    command.add_argument("--model", required=True, help="model.pt of a regression method with attention")
    command.add_argument("--store", nargs="+", required=True, help="SCAN=PATH of each chunks.h5, one figure row each")
    command.add_argument("--records", nargs="*", default=[], help="record.json of those scans (for the demo note)")
    command.add_argument("--out", required=True)
    settings_module.add_settings_argument(command)

    for name, help_text in (("dsc", "DSC per method"), ("subtypes", "DSC against subtype shares")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--results", nargs="+", required=True, help="per-scan evaluation JSON files")
        command.add_argument("--methods", nargs="+", required=True, help="methods in plotting order")
        command.add_argument("--records", nargs="*", default=[], help="record.json of the test scans")
        command.add_argument("--out", required=True)
        settings_module.add_settings_argument(command)

    command = commands.add_parser("confusion", help="confusion matrix of lobe scores for one method")
    command.add_argument("--results", nargs="+", required=True, help="per-scan evaluation JSON files of the method")
    command.add_argument("--method", required=True)
    command.add_argument("--records", nargs="*", default=[], help="record.json of the test scans (for the demo note)")
    command.add_argument("--out", required=True)
    settings_module.add_settings_argument(command)

    command = commands.add_parser("training", help="training curves")
    command.add_argument("--history", nargs="*", default=[], help="METHOD=PATH of each history.csv")
    command.add_argument("--records", nargs="*", default=[], help="record.json files (for the demo note)")
    command.add_argument("--out", required=True)
    settings_module.add_settings_argument(command)
    return parser


def main(argv=None) -> None:
    """Parse the command line and draw the requested figure."""
    arguments = build_parser().parse_args(argv)
    settings_module.configure_logging()
    COMMANDS[arguments.command](arguments)


if __name__ == "__main__":
    main()
