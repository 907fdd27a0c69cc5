"""A run killed with SIGKILL during the ablation shards resumes to byte-identical tables.

Snakemake and the shard job it is running are killed at once (as a node failure or an
out-of-memory kill would), after at least one shard has finished and while the next one runs.
The kill leaves Snakemake's lock behind, so a plain rerun refuses and names `--unlock`; after
`--unlock`, a rerun with `--rerun-incomplete` must keep the finished shards, run the others,
and produce every drop table of the model byte-identical to the uninterrupted tiny run's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from workflow_runs import planned_jobs, snakemake, snakemake_command, write_config

pytestmark = pytest.mark.workflow

MODEL = "plain"


def descendants(pid: int) -> list[int]:
    """Every process below `pid` in the process tree (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants at once; return the descendants killed."""
    below = descendants(pid)
    for target in [pid, *below]:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(target, signal.SIGKILL)
    return below


def finished_shards(workdir: Path) -> int:
    """Shard files the run has written so far."""
    return len(list((workdir / "results" / MODEL).glob("*/*/shards/*.h5")))


def running_shard_jobs(pid: int) -> list[int]:
    """Processes below `pid` running the ablate_shard script."""
    running = []
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        if b"ablate_shard" in command:
            running.append(child)
    return running


def test_sigkill_during_shards_then_rerun_incomplete(tiny_run: Path, tmp_path: Path) -> None:
    reference = tiny_run / "results" / MODEL
    tables = sorted(path.relative_to(tiny_run) for path in reference.glob("*/*/*drops.csv"))
    assert len(tables) >= 8, tables  # drops and class drops, 2 layers x 2 bases
    config = write_config(tmp_path / "config.yaml", {"only_models": [MODEL]})
    workdir = tmp_path / "run"
    workdir.mkdir()
    targets = [str(path) for path in tables]
    log = (tmp_path / "first.log").open("w")
    process = subprocess.Popen(
        snakemake_command(workdir, "--cores", "1", *targets, config=config),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    killed: list[int] = []
    first_shard_job: set[int] = set()  # processes of the first shard job (it may linger)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        done = finished_shards(workdir)
        running = set(running_shard_jobs(process.pid))
        if done == 0:
            first_shard_job |= running
        elif running - first_shard_job:  # a later shard job is running
            killed = kill_tree(process.pid)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    log.close()
    first = (tmp_path / "first.log").read_text()
    assert killed, f"the run ended before it could be killed:\n{first[-3000:]}"
    assert process.returncode == -signal.SIGKILL
    assert finished_shards(workdir) == done, "the killed shard job finished anyway"
    assert not any((workdir / table).exists() for table in tables)

    locked = snakemake(workdir, "--cores", "2", "--rerun-incomplete", *targets, config=config)
    assert locked.returncode != 0 and "--unlock" in locked.stderr, locked.stderr[-2000:]
    unlocked = snakemake(workdir, "--unlock", *targets, config=config)
    assert unlocked.returncode == 0, unlocked.stderr[-2000:]
    result = snakemake(workdir, "--cores", "2", "--rerun-incomplete", *targets, config=config)
    assert result.returncode == 0, result.stderr[-4000:]
    total = len(list((tiny_run / "results" / MODEL).glob("*/*/shards/*.h5")))
    rerun = [job for job in planned_jobs(result.stderr) if job[0] == "ablate_shard"]
    assert len(rerun) == total - done, "finished shards must be kept, the rest rerun"
    for table in tables:
        assert (workdir / table).read_bytes() == (tiny_run / table).read_bytes(), table
    assert not list((workdir / "results").rglob("*.partial"))
