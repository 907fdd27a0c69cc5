"""Shared fixtures: one full run of the tiny config, reused by every workflow test module."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_runs import snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding a complete run of tests/configs/tiny.yaml."""
    workdir = tmp_path_factory.mktemp("tiny")
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir
