"""A run killed with SIGKILL during the ablation shards resumes to byte-identical tables.

Snakemake and the shard job it is running are killed at once (as a node failure or an
out-of-memory kill would), after at least one shard has finished and while the next one runs.
The kill leaves Snakemake's lock behind, so a plain rerun refuses and names `--unlock`; after
`--unlock`, a rerun with `--rerun-incomplete` must keep the finished shards, run the others,
and produce every drop table of the model byte-identical to the uninterrupted tiny run's.

No timing decides when to kill: the run uses one simulated GPU (computing on the CPU), and once
a shard has finished the test takes that GPU's lease slot itself, so the next shard job waits
for it, says so in its log, and cannot finish before it is killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from workflow_runs import planned_jobs, snakemake, snakemake_command, write_config

from unitablation.lease import LOCK_DIR_ENV, SIMULATED_GPUS_ENV, lock_file_name

pytestmark = pytest.mark.workflow

MODEL = "plain"
#: Guards against a hung run only; no step is required to happen within a time.
HANG_GUARD_SECONDS = 900.0


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


def wait_for(what: str, condition: Callable[[], bool], process: subprocess.Popen) -> None:
    """Poll until `condition` holds; fail if the run ends first (or, as a hang guard, never)."""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {HANG_GUARD_SECONDS} s: the run hangs")
        time.sleep(0.05)


@contextlib.contextmanager
def slot_taken(lock_path: Path, process: subprocess.Popen) -> Iterator[None]:
    """Hold the simulated GPU's lease slot (waiting while a job holds it), as another job would."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)

    def taken() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        wait_for("the lease slot was free", taken, process)
        yield
    finally:
        os.close(fd)  # releases the flock


def waiting_shard_logs(workdir: Path) -> list[Path]:
    """Logs of shard jobs that are waiting for the GPU lease (their shard not written)."""
    logs = workdir / "results" / "logs" / "ablate_shard"
    waiting = []
    for log in logs.rglob("*.log"):
        relative = log.relative_to(logs)  # <model>/<layer>/<basis>/<shard>.log
        shard = workdir / "results" / relative.parent / "shards" / f"{relative.stem}.h5"
        if not shard.exists() and "waiting for a GPU lease" in log.read_text():
            waiting.append(log)
    return waiting


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
    # One simulated GPU: every GPU job takes the same lease slot, on the CPU (same numbers).
    config = write_config(tmp_path / "config.yaml", {"only_models": [MODEL], "device": "cuda"})
    locks = tmp_path / "locks"
    env = {SIMULATED_GPUS_ENV: "1", LOCK_DIR_ENV: str(locks)}
    workdir = tmp_path / "run"
    workdir.mkdir()
    targets = [str(path) for path in tables]
    log = (tmp_path / "first.log").open("w")
    process = subprocess.Popen(
        snakemake_command(workdir, "--cores", "1", *targets, config=config),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    try:
        wait_for("a shard was written", lambda: finished_shards(workdir) > 0, process)
        with slot_taken(locks / lock_file_name("0"), process):
            # A later shard job now waits for the slot: it runs, and cannot finish.
            wait_for(
                "a shard job waited for the lease", lambda: waiting_shard_logs(workdir), process
            )
            done = finished_shards(workdir)
            running = running_shard_jobs(process.pid)
            killed = kill_tree(process.pid)
            process.wait(timeout=60)
    finally:
        log.close()
        if process.poll() is None:
            kill_tree(process.pid)
            process.wait()
    first = (tmp_path / "first.log").read_text()
    assert running and set(running) <= set(killed), first[-3000:]
    assert process.returncode == -signal.SIGKILL
    assert finished_shards(workdir) == done, "the killed shard job finished anyway"
    assert 0 < done < len(list(reference.glob("*/*/shards/*.h5")))
    assert not any((workdir / table).exists() for table in tables)

    def run(*args: str) -> subprocess.CompletedProcess:
        return snakemake(workdir, *args, *targets, config=config, env=env)

    locked = run("--cores", "2", "--rerun-incomplete")
    assert locked.returncode != 0 and "--unlock" in locked.stderr, locked.stderr[-2000:]
    unlocked = run("--unlock")
    assert unlocked.returncode == 0, unlocked.stderr[-2000:]
    result = run("--cores", "2", "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-4000:]
    total = len(list((tiny_run / "results" / MODEL).glob("*/*/shards/*.h5")))
    rerun = [job for job in planned_jobs(result.stderr) if job[0] == "ablate_shard"]
    assert len(rerun) == total - done, "finished shards must be kept, the rest rerun"
    for table in tables:
        assert (workdir / table).read_bytes() == (tiny_run / table).read_bytes(), table
    assert not list((workdir / "results").rglob("*.partial"))
