"""Shared fixtures: two complete runs of the tiny config, started in the background.

When the session starts, the runs that its tests need start at once: `tiny_run` (read by most
workflow test modules) at normal priority, so that it overlaps the library tests before its first
reader, and `tiny_rerun` (test_determinism's second run from scratch) at the lowest priority, so
that it takes only the CPU the other tests leave idle. Tests that read `tiny_rerun` go last, when
that run has had the whole session. The runs do not change what any test asserts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from workflow_runs import BackgroundRun, start_snakemake

FIRST = "tiny_run"
SECOND = "tiny_rerun"
#: How each background run starts: extra environment and niceness.
RUNS = {
    FIRST: ({}, 0),
    # hash randomisation on even where the caller pins it: every job hashes differently
    SECOND: ({"PYTHONHASHSEED": "random"}, 19),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests reading the low-priority second run go last (the sort keeps every other order)."""
    items.sort(key=lambda item: SECOND in getattr(item, "fixturenames", ()))


class Runs:
    """The session's background runs of the tiny config, each started once, when first needed."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.started: dict[str, BackgroundRun] = {}

    def get(self, name: str) -> BackgroundRun:
        """The run `name` (FIRST or SECOND), started now if it is not yet going."""
        if name not in self.started:
            env, niceness = RUNS[name]
            workdir = self.factory.mktemp(name)
            self.started[name] = start_snakemake(
                workdir, "--cores", "2", env=env, niceness=niceness
            )
        return self.started[name]

    def stop(self) -> None:
        """End the runs still going (a session that stops early must not leave them behind)."""
        for run in self.started.values():
            run.stop()


@pytest.fixture(scope="session", autouse=True)
def tiny_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runs]:
    """Start, at session start, the background runs that the collected tests need."""
    runs = Runs(tmp_path_factory)
    needed = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    try:
        for name in RUNS:
            if name in needed:
                runs.get(name)
        yield runs
    finally:
        runs.stop()


@pytest.fixture(scope="session")
def tiny_run(tiny_runs: Runs) -> Path:
    """A working directory holding a complete run of tests/configs/tiny.yaml."""
    run = tiny_runs.get(FIRST)
    result = run.result()
    assert result.returncode == 0, result.stderr[-4000:]
    return run.workdir


@pytest.fixture(scope="session")
def tiny_rerun(tiny_runs: Runs) -> BackgroundRun:
    """A second run of the tiny config from scratch (hash seed random); its test waits for it."""
    return tiny_runs.get(SECOND)
