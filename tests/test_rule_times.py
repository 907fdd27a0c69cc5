"""The per-rule time table (unitablation.rule_times) on hand-made benchmark files: the sums,
means and maxima worked out by hand here, NA cells, bad files refused by name, and the docs block
of benchmarks/rule_times.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from unitablation import rule_times

ROOT = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_tsv(path: Path, *rows: tuple[str, str, str]) -> None:
    """A Snakemake-style benchmark file with rows of (s, max_rss, cpu_time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{s}\t0:00:01\t{rss}\t900.0\t100.0\t110.0\t0.0\t1.0\t55.0\t{cpu}\n" for s, rss, cpu in rows
    ]
    path.write_text(HEADER + "".join(lines))


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """benchmarks/rule_times.py, imported from its folder."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import rule_times as module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder with three rules' benchmark files (one with NA memory and CPU)."""
    root = tmp_path / "results"
    bench = root / "benchmarks"
    write_tsv(bench / "ablate_shard/plain/relu5/unit/0000.tsv", ("10.5", "300.0", "9.0"))
    write_tsv(bench / "ablate_shard/plain/relu5/rot7/0000.tsv", ("4.5", "500.5", "3.5"))
    write_tsv(bench / "ablate_shard/wide/relu5/unit/0000.tsv", ("6.0", "NA", "NA"))
    write_tsv(bench / "summary/x.tsv", ("1.5", "NA", "NA"))
    write_tsv(bench / "compare.tsv", ("3.0", "120.0", "2.0"))  # a one-job rule, as its log
    return root


def test_totals_by_rule(results: Path) -> None:
    rows = {row.rule: row for row in rule_times.totals(rule_times.read_run(results))}
    assert set(rows) == {"ablate_shard", "summary", "compare"}
    shard = rows["ablate_shard"]
    assert shard.jobs == 3
    assert shard.total_wall_s == pytest.approx(21.0)
    assert shard.mean_wall_s == pytest.approx(7.0)
    assert shard.max_wall_s == pytest.approx(10.5)
    assert shard.total_cpu_s == pytest.approx(12.5)  # the NA row counts for nothing
    assert shard.max_rss_mb == pytest.approx(500.5)
    summary = rows["summary"]
    assert (summary.jobs, summary.total_cpu_s, summary.max_rss_mb) == (1, None, None)


def test_largest_total_first(results: Path) -> None:
    rows = rule_times.totals(rule_times.read_run(results))
    assert [row.rule for row in rows] == ["ablate_shard", "compare", "summary"]


def test_rerun_rows_count_as_jobs(tmp_path: Path) -> None:
    """A benchmark file with repeats (several rows) counts each row as one run."""
    write_tsv(tmp_path / "benchmarks/r/a.tsv", ("1.0", "10.0", "1.0"), ("3.0", "30.0", "2.0"))
    (row,) = rule_times.totals(rule_times.read_run(tmp_path))
    assert (row.jobs, row.total_wall_s, row.max_wall_s, row.total_cpu_s) == (2, 4.0, 3.0, 3.0)


def test_command_line_prints_table_and_writes_json(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "times.json"
    done = subprocess.run(
        [sys.executable, "-m", "unitablation.rule_times", str(results), "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| rule | jobs | total wall s |")
    assert "| ablate_shard | 3 | 21.0 | 7.0 | 10.5 | 12.5 | 500.5 |" in lines
    assert "| summary | 1 | 1.5 | 1.5 | 1.5 | NA | NA |" in lines
    assert lines[-1] == "| (all rules) | 5 | 25.5 | NA | 10.5 | 14.5 | 500.5 |"
    data = json.loads(out.read_text())
    assert [row["rule"] for row in data["rules"]] == ["ablate_shard", "compare", "summary"]
    assert data["rules"][0]["total_cpu_s"] == pytest.approx(12.5)
    assert not list(out.parent.glob(".*.partial"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("s\tmax_rss\n1.0\t2.0\n", "without column(s) cpu_time"),
        (HEADER, "no benchmark row"),
        (HEADER.replace("\n", "") + "\n" + "x\t0\t1\t1\t1\t1\t0\t0\t1\t1\n", "column s holds 'x'"),
        (HEADER + "NA\t0\t1\t1\t1\t1\t0\t0\t1\t1\n", "no wall time"),
    ],
)
def test_bad_file_named_and_nothing_written(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "results/benchmarks/rule/bad.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text(content)
    out = tmp_path / "times.json"
    assert rule_times.main([str(tmp_path / "results"), "--json", str(out)]) == 1
    error = capsys.readouterr().err
    assert str(bad) in error and message in error
    assert not out.exists()


def test_no_benchmark_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rule_times.main([str(tmp_path)]) == 1
    assert "no benchmarks/ folder" in capsys.readouterr().err


def test_docs_block_from_report(results: Path, bench: ModuleType) -> None:
    """benchmarks/rule_times.py's block: a provenance line naming the jobs and load, the table."""
    rows = rule_times.totals(rule_times.read_run(results))
    report = {
        "date": "2026-12-02T06:00:00+00:00",
        "git": {"commit": "0123456789abcdef", "dirty": False, "dirty_paths": []},
        "cpu": "Test CPU",
        "python": "3.12",
        "load_average_at_report": [1.0, 2.0, 3.0],
        "load_average_at_start": [4.0, 5.0, 6.5],
        "command": "snakemake --cores 2",
        "run_wall_s": 125.4,
        **json.loads(json.dumps(rule_times.report(rows))),
    }
    block = bench.docs_tables(report)["rule_times"]
    first, table = block.split("\n\n", 1)
    assert first == (
        "`snakemake --cores 2` at 0123456, 2026-12-02: 5 jobs, run wall time 2 min 5 s, "
        "on Test CPU (load average 4.0 / 5.0 / 6.5)."
    )
    assert table == rule_times.format_table(rows) + "\n"


def test_floor_line_counts_training_shards_and_imports(tmp_path: Path, bench: ModuleType) -> None:
    """The floor: training and shards at their CPU s, other torch jobs at one import each."""
    bench_dir = tmp_path / "benchmarks"
    write_tsv(bench_dir / "train_model/a.tsv", ("60.0", "1.0", "50.0"))
    write_tsv(bench_dir / "train_model/b.tsv", ("60.0", "1.0", "50.0"))
    for n in range(3):
        write_tsv(bench_dir / f"ablate_shard/{n}.tsv", ("5.0", "1.0", "4.0"))
    for n in range(4):
        write_tsv(bench_dir / f"concept_iou/{n}.tsv", ("9.0", "1.0", "8.0"))
    write_tsv(bench_dir / "summary/x.tsv", ("30.0", "1.0", "30.0"))  # no torch: free
    rows = rule_times.totals(rule_times.read_run(tmp_path))
    line = bench.floor_line(rows, 2.0)
    # 9 torch jobs; 100 + 12 CPU s fixed, 4 x 2.0 s imports: 120 CPU s, 60 s on 2 cores
    assert "9 jobs import it" in line
    assert "plus the import alone of the other 4 torch jobs (8 s) make 120 CPU s" in line
    assert "at least 1 min 0 s on 2 cores" in line


def test_share_line_sums_the_named_rules(results: Path, bench: ModuleType) -> None:
    rows = rule_times.totals(rule_times.read_run(results))
    # compare: 3.0 wall s of 25.5, 2.0 CPU s of 14.5
    assert bench.share_line(rows, ("compare",), "It") == (
        "It (`compare`): 1 jobs, 3.0 job-wall s (11.8% of all jobs') and 2.0 CPU s (13.8%)."
    )
    assert bench.share_line(rows, ("browser",), "It") == ""


def test_folder_size_counts_files_and_bytes(tmp_path: Path, bench: ModuleType) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.js").write_bytes(b"x" * 10)
    (tmp_path / "a" / "b" / "two.png").write_bytes(b"y" * 5)
    assert bench.folder_size(tmp_path / "a") == (2, 15)
    assert bench.folder_size(tmp_path / "missing") == (0, 0)
