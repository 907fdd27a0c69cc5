"""Shared benchmark helpers: what the figures were measured on, timing, peak memory of child
processes and table printing.

Only the standard library is imported at module level (numpy, psutil and torch inside the
functions that need them), so that benchmarks/docs_tables.py can import a benchmark's
`docs_tables` cheaply.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    """Installed version of a distribution, or 'missing'."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def git_state(root: Path = ROOT) -> dict[str, object]:
    """The commit the figures were measured at, and which tracked files differed from it."""

    def git(*arguments: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *arguments], capture_output=True, text=True, check=False
        )
        return done.stdout if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD").strip() or "unknown"
    changed = sorted(
        line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
    )
    return {"commit": commit, "dirty": bool(changed), "dirty_paths": changed}


def commit_label(root: Path = ROOT) -> str:
    """git_state as one string: the commit, with -dirty when tracked files differ from it."""
    state = git_state(root)
    return f"{state['commit']}{'-dirty' if state['dirty'] else ''}"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 2 decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def hardware(threads: int, packages: Sequence[str] = ()) -> dict[str, object]:
    """What the figures were measured on: date (UTC), commit, CPU, memory, load, threads and
    versions."""
    import numpy as np
    import psutil
    import torch

    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "cpu": cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": load_average(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mkl": torch.backends.mkl.is_available(),
    }
    info.update({name: package_version(name) for name in packages})
    return info


def timed(function: Callable[[], T]) -> tuple[T, float]:
    """(result, wall-clock seconds) of one call."""
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def proc_status_mb(field: str) -> float:
    """A memory field of Linux's /proc/self/status (VmRSS, VmHWM) in MB; NaN without it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    Linux's VmHWM belongs to the process's own address space; ru_maxrss (the fallback elsewhere)
    also keeps the parent's resident size at fork, which would hide a small child's peak.
    """
    peak = proc_status_mb("VmHWM")
    if peak == peak:  # not NaN
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_json_child(command: list[str], what: str) -> tuple[dict[str, Any], str]:
    """Run a benchmark's child process (a fresh interpreter, so that its peak RSS is its own):
    the JSON object on the last line of its stdout, and its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def format_cell(value: object) -> str:
    """A table cell: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict[str, object]], columns: list[tuple[str, str]]) -> None:
    """Print rows as an aligned pipe-separated table."""
    cells = [[format_cell(row[key]) for key, _ in columns] for row in rows]
    widths = [
        max(len(title), *(len(line[i]) for line in cells)) for i, (_, title) in enumerate(columns)
    ]
    print(" | ".join(title.rjust(width) for (_, title), width in zip(columns, widths, strict=True)))
    print("-+-".join("-" * width for width in widths))
    for line in cells:
        print(" | ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON report (folders made as needed; a temp file renamed, so a killed
    run leaves no partial report) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)
    print(f"wrote {path}")
