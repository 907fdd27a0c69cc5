"""Helpers for tests that run the real Snakemake workflow on small configs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
VARIANTS = ("plain", "batchnorm", "dropout", "batchnorm_dropout")
JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", re.MULTILINE)


def snakemake_command(
    workdir: Path,
    *args: str,
    config: Path | Sequence[Path] = TINY,
    snakefile: Path = ROOT / "Snakefile",
) -> list[str]:
    """The command line running Snakemake on `snakefile` in `workdir` with the config file(s)."""
    configs = [config] if isinstance(config, Path) else list(config)
    return [  # options that take several values (--configfile, --resources) end the list
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        *map(str, configs),
    ]


def snakemake(
    workdir: Path,
    *args: str,
    config: Path | Sequence[Path] = TINY,
    snakefile: Path = ROOT / "Snakefile",
    env: Mapping[str, str] | None = None,
    timeout: float = 3600,  # a guard against hangs only: a loaded 2-core machine is slow
) -> subprocess.CompletedProcess:
    """Run Snakemake on the project's Snakefile in `workdir` with `config` (and extra `env`).

    The environment is the caller's as it is: hash randomisation stays on (PYTHONHASHSEED is not
    pinned), as it is for users, so no test can depend on one set or dict order.
    """
    command = snakemake_command(workdir, *args, config=config, snakefile=snakefile)
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout)


@dataclass
class BackgroundRun:
    """A Snakemake run going on in its own process group, its output in files beside `workdir`."""

    workdir: Path
    process: subprocess.Popen
    stdout: Path
    stderr: Path

    def result(self, timeout: float = 3600) -> subprocess.CompletedProcess:
        """Wait for the run (`timeout` guards against hangs only) and return what it printed."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(
            self.process.args,
            self.process.returncode,
            self.stdout.read_text(),
            self.stderr.read_text(),
        )

    def stop(self) -> None:
        """End the run and every job it started, if it is still going."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_snakemake(
    workdir: Path,
    *args: str,
    config: Path | Sequence[Path] = TINY,
    env: Mapping[str, str] | None = None,
    niceness: int = 0,
) -> BackgroundRun:
    """Start Snakemake as `snakemake()` would run it, without waiting; `niceness` > 0 gives it
    only the CPU that other processes of this session leave idle.

    The run gets a process group of its own (so `stop` reaches its jobs) but stays in the caller's
    session: with the kernel's autogroup scheduling, a new session would make the niceness void.
    """
    command = snakemake_command(workdir, *args, config=config)
    if niceness:
        command = ["nice", "-n", str(niceness), *command]
    stdout = workdir.with_name(f"{workdir.name}.stdout")
    stderr = workdir.with_name(f"{workdir.name}.stderr")
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            command, stdout=out, stderr=err, env={**os.environ, **(env or {})}, process_group=0
        )
    return BackgroundRun(workdir, process, stdout, stderr)


def tiny_config() -> dict[str, Any]:
    """The tiny config as a fresh dict."""
    return yaml.safe_load(TINY.read_text())


def write_config(path: Path, changes: Mapping[str, Any]) -> Path:
    """The tiny config with dotted keys replaced (e.g. {"concepts.quantile": 0.01}), at `path`."""
    config = tiny_config()
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def planned_jobs(output: str, reason: str = "") -> set[tuple[str, str]]:
    """(rule, first output) of every job a `snakemake -n` run printed (whose reason says
    `reason`, if given)."""
    jobs = set()
    for rule, body in JOB.findall(output):
        if reason and not re.search(rf"^    reason: .*{re.escape(reason)}", body, re.MULTILINE):
            continue
        outputs = re.search(r"^    output: (.*)$", body, re.MULTILINE)
        jobs.add((rule, outputs.group(1).split(", ")[0] if outputs else ""))
    return jobs
