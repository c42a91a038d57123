"""Helpers shared by the benchmark scripts: machine description, measured subprocesses, docs sections.

Each script prints a markdown block and, with --update-docs, replaces the text
between its two HTML comments in docs/benchmarks.md, adding the section at the
end of the page when it is missing. Only that block changes, so other people's
sections stay as they are.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DOCS_PAGE = REPOSITORY / "docs" / "benchmarks.md"
WORKFLOW = REPOSITORY / "workflow"
RICORD_DICOM = REPOSITORY.parent / "shared" / "data" / "ricord-1a-419639-000082" / "dicom"


def load_config(path: Path | None = None) -> dict:
    """Return config.yaml (or `path`) as a dict."""
    import yaml

    return yaml.safe_load((path or REPOSITORY / "config.yaml").read_text())


def machine_description() -> str:
    """Describe the machine in one line: cores, CPU model, RAM, OS, Python and the load average now."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    memory = "unknown RAM"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        found = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.MULTILINE)
        memory = f"{int(found.group(1)) / 1024**2:.1f} GiB RAM" if found else memory
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cores} cores ({model}), {memory}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, load average {load_average():.1f} at the start")


def load_average() -> float:
    """Return the 1-minute load average, or NaN where the system has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def header_lines(command: str) -> list[str]:
    """Return the command, date and machine lines that open every results block."""
    return [
        f"Command: `{command}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Machine: {machine_description()}  ",
    ]


def command_line() -> str:
    """Return the command that started this script, with the script path relative to the repository."""
    script = Path(sys.argv[0]).resolve()
    try:
        relative = script.relative_to(REPOSITORY)
    except ValueError:
        relative = script
    return " ".join(["python", str(relative)] + [shlex.quote(argument) for argument in sys.argv[1:]])


def stage_environment(threads: int) -> dict:
    """Return the environment of a stage subprocess: dramseg importable, math libraries limited to `threads`."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKFLOW), environment.get("PYTHONPATH")]))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        environment[name] = str(threads)
    return environment


def run_measured(argv: list[str], log_path: Path, threads: int, cwd: Path | None = None) -> dict:
    """Run a command under /usr/bin/time -v; return wall seconds, CPU seconds and peak resident memory (MiB).

    GNU time forks the command from its own small process, so the peak
    memory is the command's alone. Where /usr/bin/time is missing, the peak
    comes from os.wait4, which on Linux may include this process's own size.
    The command's stdout and stderr go to `log_path`.
    """
    time_path = log_path.with_suffix(".time")
    timer = Path("/usr/bin/time")
    wrapped = [str(timer), "-v", "-o", str(time_path)] + argv if timer.exists() else argv
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(wrapped, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=stage_environment(threads))
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"command failed with exit code {process.returncode}: {shlex.join(argv)}\n"
                         f"last lines of {log_path}:\n" + "\n".join(log_path.read_text().splitlines()[-15:]))
    if timer.exists():
        report = time_path.read_text()
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
        user = float(re.search(r"User time \(seconds\): ([\d.]+)", report).group(1))
        system = float(re.search(r"System time \(seconds\): ([\d.]+)", report).group(1))
        cpu_seconds = user + system
    else:
        peak_kib = usage.ru_maxrss
        cpu_seconds = usage.ru_utime + usage.ru_stime
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak_kib / 1024}


def markdown_table(columns: list[str], rows: list[list]) -> list[str]:
    """Return the lines of a markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def update_docs_section(title: str, script_name: str, block: str, intro: str = "") -> None:
    """Replace the block between this script's markers in docs/benchmarks.md.

    A missing section is added at the end of the page as `## title`, the
    optional `intro` paragraph and the marked block. Text outside the markers
    is left alone, so hand-written notes around them survive reruns.
    """
    begin = f"<!-- {script_name} results: begin -->"
    end = f"<!-- {script_name} results: end -->"
    marked = f"{begin}\n{block.rstrip()}\n{end}"
    text = DOCS_PAGE.read_text() if DOCS_PAGE.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        _, after = rest.split(end, 1)
        text = before + marked + after
    else:
        section = f"\n## {title}\n\n" + (intro.rstrip() + "\n\n" if intro else "") + marked + "\n"
        text = text.rstrip("\n") + "\n" + section
    DOCS_PAGE.write_text(text)
