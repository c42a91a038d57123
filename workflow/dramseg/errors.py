"""Exceptions raised on bad input, with messages that name the scan, file and fix."""


class PipelineInputError(ValueError):
    """Invalid input data: a scan, file, label map, table row or setting.

    The message names the scan and file involved, the offending value, what
    was expected and what the user can do about it.
    """


def input_error(scan_id: str | None, path, problem: str, fix: str) -> PipelineInputError:
    """Build a PipelineInputError whose message reads "scan X, file Y: problem. fix"."""
    where = []
    if scan_id is not None:
        where.append(f"scan {scan_id!r}")
    if path is not None:
        where.append(f"file {str(path)!r}")
    prefix = ", ".join(where)
    text = f"{prefix}: {problem}" if prefix else problem
    if fix:
        text = f"{text}. {fix}"
    return PipelineInputError(text)
