"""Per-rule totals of a run's benchmark files: where a run's time went, rule by rule.

Every rule writes Snakemake's benchmark TSV at results/benchmarks/<rule>/<wildcards>.tsv, or
results/benchmarks/<rule>.tsv for a rule with one job, mirroring the logs (one
header line, then one row per run of the job: wall seconds `s`, `max_rss` in MB, `cpu_time` in
seconds, ...; `NA` where Snakemake sampled nothing). This module reads them (no Snakemake) and
sums them by rule: jobs, total, mean and max wall seconds, total CPU seconds and the largest RSS.

    python -m unitablation.rule_times results [--json PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

#: The folder of benchmark files under a results folder.
BENCHMARK_DIR = "benchmarks"
#: Columns a benchmark file must have (Snakemake's names).
REQUIRED_COLUMNS = ("s", "max_rss", "cpu_time")


@dataclass(frozen=True)
class JobTime:
    """One run of one job, as its benchmark row records it (None where Snakemake wrote NA)."""

    rule: str
    path: str
    wall_s: float
    cpu_s: float | None
    max_rss_mb: float | None


@dataclass(frozen=True)
class RuleTotals:
    """The runs of one rule summed: what the table prints per rule."""

    rule: str
    jobs: int
    total_wall_s: float
    mean_wall_s: float
    max_wall_s: float
    total_cpu_s: float | None
    max_rss_mb: float | None


def _number(value: str, column: str, where: str) -> float | None:
    """A benchmark cell as a float, None for NA/-; ValueError names the file and column."""
    if value.strip() in ("NA", "-", ""):
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where}: column {column} holds {value!r}, not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: column {column} holds {value!r}, not a finite number")
    return number


def read_benchmark(path: Path, rule: str) -> list[JobTime]:
    """The rows of one benchmark TSV; ValueError names the file when it is no benchmark file."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
        header = rows[0].keys() if rows else []
    if not rows:
        raise ValueError(f"{path}: no benchmark row (empty file or header only)")
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise ValueError(f"{path}: benchmark file without column(s) {', '.join(missing)}")
    times = []
    for number, row in enumerate(rows, start=2):
        where = f"{path} line {number}"
        wall = _number(row["s"], "s", where)
        if wall is None:
            raise ValueError(f"{where}: no wall time (column s)")
        times.append(
            JobTime(
                rule=rule,
                path=str(path),
                wall_s=wall,
                cpu_s=_number(row["cpu_time"], "cpu_time", where),
                max_rss_mb=_number(row["max_rss"], "max_rss", where),
            )
        )
    return times


def read_run(results: Path) -> list[JobTime]:
    """Every benchmark row under results/benchmarks/: the rule is the first folder below it, or
    the file's stem for a file right in it."""
    root = results / BENCHMARK_DIR
    if not root.is_dir():
        raise ValueError(f"{results}: no {BENCHMARK_DIR}/ folder (no benchmark files written)")
    times = []
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root)
        rule = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        times.extend(read_benchmark(path, rule))
    if not times:
        raise ValueError(f"{root}: no benchmark files (*.tsv)")
    return times


def _total(values: Iterable[float | None]) -> float | None:
    """Sum of the known values, None when none is known."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _largest(values: Iterable[float | None]) -> float | None:
    """Largest known value, None when none is known."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


def totals(times: Sequence[JobTime]) -> list[RuleTotals]:
    """Per-rule totals, the rule with the largest total wall time first (then by name)."""
    by_rule: dict[str, list[JobTime]] = {}
    for job in times:
        by_rule.setdefault(job.rule, []).append(job)
    rows = []
    for rule, jobs in by_rule.items():
        walls = [job.wall_s for job in jobs]
        rows.append(
            RuleTotals(
                rule=rule,
                jobs=len(jobs),
                total_wall_s=sum(walls),
                mean_wall_s=sum(walls) / len(walls),
                max_wall_s=max(walls),
                total_cpu_s=_total(job.cpu_s for job in jobs),
                max_rss_mb=_largest(job.max_rss_mb for job in jobs),
            )
        )
    return sorted(rows, key=lambda row: (-row.total_wall_s, row.rule))


COLUMNS = (
    ("rule", "rule"),
    ("jobs", "jobs"),
    ("total_wall_s", "total wall s"),
    ("mean_wall_s", "mean wall s"),
    ("max_wall_s", "max wall s"),
    ("total_cpu_s", "total CPU s"),
    ("max_rss_mb", "max RSS MB"),
)


def _cell(value: object) -> str:
    """One table cell: floats to one decimal, unknown as NA."""
    if value is None:
        return "NA"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[RuleTotals]) -> str:
    """The totals as a markdown table, with an `(all rules)` line summing jobs, wall and CPU s."""
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" if key == "rule" else "---:" for key, _ in COLUMNS) + "|",
    ]
    for row in rows:
        values = asdict(row)
        lines.append("| " + " | ".join(_cell(values[key]) for key, _ in COLUMNS) + " |")
    overall = {
        "rule": "(all rules)",
        "jobs": sum(row.jobs for row in rows),
        "total_wall_s": sum(row.total_wall_s for row in rows),
        "mean_wall_s": None,
        "max_wall_s": max((row.max_wall_s for row in rows), default=None),
        "total_cpu_s": _total(row.total_cpu_s for row in rows),
        "max_rss_mb": _largest(row.max_rss_mb for row in rows),
    }
    lines.append("| " + " | ".join(_cell(overall[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def report(rows: Sequence[RuleTotals]) -> dict[str, object]:
    """The totals as JSON-ready data (`rules`: one object per rule, table order)."""
    return {"rules": [asdict(row) for row in rows]}


def write_json(path: Path, data: dict[str, object]) -> None:
    """Write JSON through a temporary file and a rename (no partial file on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".partial", delete=False
    ) as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(handle.name, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line: the results folder and an optional JSON path."""
    parser = argparse.ArgumentParser(
        prog="python -m unitablation.rule_times",
        description="Per-rule wall time, CPU time and memory of a run, from its benchmark files.",
    )
    parser.add_argument("results", type=Path, help="the run's results folder")
    parser.add_argument("--json", type=Path, help="also write the totals as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-rule table (and write the JSON); exit 1 with the message on bad input."""
    args = parse_args(argv)
    try:
        rows = totals(read_run(args.results))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(rows))
    if args.json is not None:
        write_json(args.json, report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
