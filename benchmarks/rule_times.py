"""Per-rule time table of one pipeline run, from its benchmark files, for the docs.

Reads results/benchmarks/ of a finished run (unitablation.rule_times), prints the per-rule
table and writes it with what it was measured on (commit, CPU, load average now and, when
given, at the run's start, the run's wall time and command) to benchmarks/measured/rule_times.json.
`docs_tables(report)` gives the docs' block `rule_times` from that JSON.

    python benchmarks/rule_times.py RESULTS [--json PATH] [--wall-s S] [--load-at-start L]
        [--command "snakemake --cores 2"]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reporting import ROOT, cpu_model, git_state, load_average, write_report

DEFAULT_JSON = ROOT / "benchmarks" / "measured" / "rule_times.json"
# Rules whose jobs import torch (each pays the import once); the floor line counts them.
TORCH_RULES = (
    "train_model",
    "extract_activations",
    "extract_outputs",
    "ablate_shard",
    "concept_iou",
    "unit_attributes",
    "cumulative_ablation",
)
#: The unit browser's rules (the docs block states their share of the run).
BROWSER_RULES = ("browser_layer", "browser")


def folder_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) under a folder; (0, 0) when it does not exist."""
    files = [path for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []
    return len(files), sum(path.stat().st_size for path in files)


def torch_import_seconds(repeats: int = 3) -> list[float]:
    """Wall seconds of `python -c "import torch"` in this interpreter, `repeats` times."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - start)
    return times


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The run's per-rule totals with their provenance."""
    from unitablation import rule_times

    rows = rule_times.totals(rule_times.read_run(args.results))
    print(rule_times.format_table(rows))
    imports = torch_import_seconds()
    print(f"import torch: {', '.join(f'{s:.2f}' for s in imports)} s")
    browser = folder_size(args.results / "browser")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "load_average_at_report": load_average(),
        "load_average_at_start": args.load_at_start,
        "command": args.command,
        "run_wall_s": args.wall_s,
        "torch_import_s": imports,
        "browser_files": browser[0],
        "browser_bytes": browser[1],
        **rule_times.report(rows),
    }


def _seconds(value: float | None) -> str:
    """Seconds as `m min s s` (or NA)."""
    if value is None:
        return "NA"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds} s"


def docs_tables(report: dict[str, Any]) -> dict[str, str]:
    """The docs' block `rule_times`: one provenance line and the per-rule table."""
    from unitablation.rule_times import RuleTotals, format_table

    rows = [RuleTotals(**row) for row in report["rules"]]
    jobs = sum(row.jobs for row in rows)
    load = report.get("load_average_at_start") or report["load_average_at_report"]
    commit = str(report["git"]["commit"])[:7] + (" (dirty)" if report["git"]["dirty"] else "")
    line = (
        f"`{report['command'] or 'snakemake'}` at {commit}, {report['date'][:10]}: {jobs} jobs, "
        f"run wall time {_seconds(report.get('run_wall_s'))}, on {report['cpu']} "
        f"(load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f})."
    )
    block = f"{line}\n\n{format_table(rows)}\n"
    if report.get("torch_import_s"):
        block += "\n" + floor_line(rows, statistics.median(report["torch_import_s"])) + "\n"
    share = share_line(rows, BROWSER_RULES, "The unit browser")
    if share:
        if report.get("browser_files"):
            share += (
                f" Its folder, results/browser/, holds {report['browser_files']:,} files, "
                f"{report['browser_bytes'] / 1e6:.1f} MB."
            )
        block += "\n" + share + "\n"
    return {"rule_times": block}


def share_line(rows: list[Any], rules: tuple[str, ...], name: str) -> str:
    """`name`'s jobs, wall and CPU seconds and their share of the run's totals ('' if absent)."""
    chosen = [row for row in rows if row.rule in rules]
    if not chosen:
        return ""
    wall = sum(row.total_wall_s for row in chosen)
    cpu = sum(row.total_cpu_s or 0.0 for row in chosen)
    all_wall = sum(row.total_wall_s for row in rows)
    all_cpu = sum(row.total_cpu_s or 0.0 for row in rows)
    names = ", ".join(f"`{row.rule}`" for row in chosen)
    return (
        f"{name} ({names}): {sum(row.jobs for row in chosen)} jobs, {wall:,.1f} job-wall s "
        f"({100 * wall / all_wall:.1f}% of all jobs') and {cpu:,.1f} CPU s "
        f"({100 * cpu / all_cpu:.1f}%)."
    )


def floor_line(rows: list[Any], import_s: float, cores: int = 2) -> str:
    """The wall time this job layout cannot beat on `cores` cores with the tables unchanged.

    Training (its arithmetic fixes the weights, so every table) and the ablation shards count
    at their measured CPU seconds; every other job that imports torch counts only the import;
    all the rest counts as free.
    """
    by_rule = {row.rule: row for row in rows}

    def cpu(rule: str) -> float:
        row = by_rule.get(rule)
        return (row.total_cpu_s or 0.0) if row else 0.0

    torch_jobs = sum(by_rule[rule].jobs for rule in TORCH_RULES if rule in by_rule)
    fixed = ("train_model", "ablate_shard")
    fixed_jobs = sum(by_rule[rule].jobs for rule in fixed if rule in by_rule)
    imports = (torch_jobs - fixed_jobs) * import_s
    floor_cpu = cpu("train_model") + cpu("ablate_shard") + imports
    return (
        f"Floor of this job layout: `import torch` takes {import_s:.2f} s here (median of 3), "
        f"and {torch_jobs} jobs import it. Training ({cpu('train_model'):,.0f} CPU s) and the "
        f"ablation shards ({cpu('ablate_shard'):,.0f} CPU s) plus the import alone of the other "
        f"{torch_jobs - fixed_jobs} torch jobs ({imports:,.0f} s) make {floor_cpu:,.0f} CPU s: "
        f"at least {_seconds(floor_cpu / cores)} on {cores} cores even if every other job cost "
        "nothing."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: the results folder, the JSON path and what the caller knows of the run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the run's results folder")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write")
    parser.add_argument("--wall-s", type=float, help="the run's wall time, as the caller timed it")
    parser.add_argument(
        "--load-at-start", type=float, nargs=3, help="os.getloadavg() when the run started"
    )
    parser.add_argument("--command", help="the command that made the run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure and write the report; exit 1 naming the file on bad benchmark files."""
    args = parse_args(argv)
    try:
        report = measure(args)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
