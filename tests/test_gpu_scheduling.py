"""Two GPU jobs at once on distinct devices: `--resources gpu=2` plus the lease, GPUs simulated.

No timing makes the jobs overlap: every simulated lease waits at a gate directory once it holds
its slot, and the test lets each job through except the first two ablation shards, which it
keeps until both hold their slots together, then opens the gate for all.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from workflow_runs import snakemake_command, write_config

from unitablation.lease import LOCK_DIR_ENV, SIMULATED_GATE_ENV, SIMULATED_GPUS_ENV

pytestmark = pytest.mark.workflow

#: Guards against a hung run only; nothing is required to happen within a time.
HANG_GUARD_SECONDS = 900.0

LEASE = re.compile(
    r"GPU lease: slot (\d+) held from ([\d.]+)\n(?:.*\n)*?.*GPU lease: slot \1 released at ([\d.]+)"
)


def leases(log_dir: Path) -> list[tuple[str, int, float, float]]:
    """(log, slot, start, end) of every lease recorded in the GPU jobs' logs."""
    found = []
    for log in sorted(log_dir.rglob("*.log")):
        for slot, start, end in LEASE.findall(log.read_text()):
            found.append((str(log.relative_to(log_dir)), int(slot), float(start), float(end)))
    return found


def is_shard_job(pid: int) -> bool:
    """Whether process `pid` runs the ablate_shard script (False once it has ended)."""
    try:
        return b"ablate_shard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def hold_two_shard_jobs(gate: Path, process: subprocess.Popen) -> dict[int, int]:
    """Let every gated job go except shard jobs, until two of them hold slots at once; then
    open the gate. Returns {pid: slot} of those two."""
    held: dict[int, int] = {}
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    try:
        while len(held) < 2:
            if process.poll() is not None:
                pytest.fail(f"the run ended (status {process.returncode}) with {held} held")
            if time.monotonic() > deadline:
                pytest.fail(f"two shard jobs never held slots together: {held} after the guard")
            for announced in sorted(gate.glob("*.held")):
                pid = int(announced.stem)
                if pid in held or (gate / f"{pid}.go").exists():
                    continue
                if is_shard_job(pid):
                    held[pid] = int(announced.read_text())
                else:
                    (gate / f"{pid}.go").touch()
            time.sleep(0.05)
    finally:
        (gate / "open").touch()
    return held


def test_two_gpu_jobs_run_at_once_on_distinct_devices(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "gpus.yaml",
        {
            "device": "cuda",
            "models": {"plain": {"arch": "tinyalex", "widths": [4, 6, 8, 8, 8], "hidden": 16}},
            "layers": ["features.relu5"],
            "rotation.seeds": [],
            "ablation.shard_size": 1,
        },
    )
    shards = [f"results/plain/features.relu5/unit/shards/{i:04d}.h5" for i in range(8)]
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {
        SIMULATED_GPUS_ENV: "2",
        SIMULATED_GATE_ENV: str(gate),
        LOCK_DIR_ENV: str(tmp_path / "locks"),
    }
    # targets before --resources, which takes every value after it
    command = snakemake_command(
        tmp_path, *shards, "--cores", "4", "--resources", "gpu=2", config=config
    )
    with (tmp_path / "snakemake.log").open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        try:
            together = hold_two_shard_jobs(gate, process)
            process.wait(timeout=HANG_GUARD_SECONDS)
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
    assert process.returncode == 0, (tmp_path / "snakemake.log").read_text()[-6000:]
    assert sorted(together.values()) == [0, 1], together  # held at once, on distinct slots
    held = leases(tmp_path / "results" / "logs")
    jobs = {log.split("/")[0] for log, *_ in held}
    assert {"train_model", "extract_activations", "ablate_shard"} <= jobs
    assert sum(log.startswith("ablate_shard") for log, *_ in held) == 8
    assert {slot for _, slot, _, _ in held} == {0, 1}
    overlapping = [
        (a, b) for a, b in itertools.combinations(held, 2) if a[2] < b[3] and b[2] < a[3]
    ]
    assert overlapping, "no two GPU jobs ever held a lease at the same time"
    for a, b in overlapping:
        assert a[1] != b[1], f"{a[0]} and {b[0]} held slot {a[1]} at the same time"
    for moment in (start for _, _, start, _ in held):
        assert sum(start <= moment < end for _, _, start, end in held) <= 2
    log = (tmp_path / "results/logs/ablate_shard/plain/features.relu5/unit/0000.log").read_text()
    assert "simulated by UNITABLATION_SIMULATED_GPUS=2: running on cpu" in log
