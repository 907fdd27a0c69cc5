"""Two GPU jobs at once on distinct devices: `--resources gpu=2` plus the lease, GPUs simulated."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from workflow_runs import snakemake, write_config

pytestmark = pytest.mark.workflow

LEASE = re.compile(
    r"GPU lease: slot (\d+) held from ([\d.]+)\n(?:.*\n)*?GPU lease: slot \1 released at ([\d.]+)"
)


def leases(log_dir: Path) -> list[tuple[str, int, float, float]]:
    """(log, slot, start, end) of every lease recorded in the GPU jobs' logs."""
    found = []
    for log in sorted(log_dir.rglob("*.log")):
        for slot, start, end in LEASE.findall(log.read_text()):
            found.append((str(log.relative_to(log_dir)), int(slot), float(start), float(end)))
    return found


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
    result = snakemake(
        tmp_path,
        *shards,  # targets before --resources, which takes every value after it
        "--cores",
        "4",
        "--resources",
        "gpu=2",
        config=config,
        env={
            "UNITABLATION_SIMULATED_GPUS": "2",
            "UNITABLATION_SIMULATED_HOLD_SECONDS": "6",  # jobs start seconds apart at most
            "UNITABLATION_LOCK_DIR": str(tmp_path / "locks"),
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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
