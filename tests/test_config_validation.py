"""Bad configs fail before any job runs, with a message that names the key and what was wanted.

Each case edits the tiny config (dotted keys) and runs `snakemake -n` in an empty directory: the
run must fail, build no job, and its error must name the key and the expectation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from workflow_runs import snakemake, write_config

pytestmark = pytest.mark.workflow

RESNET = {"arch": "resnet18", "num_classes": 3, "eval_images": "val", "concept_set": "broden"}

#: (case id, dotted changes, fragments the error output must contain)
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("seed not an integer", {"seed": "abc"}, ["seed", "integer"]),
    ("unknown top-level key", {"sed": 3}, ["sed", "Additional properties"]),
    ("unknown nested key", {"ablation.shard_sise": 4}, ["shard_sise", "ablation"]),
    ("device name", {"device": "gpu"}, ["device", "does not match"]),
    ("negative image size", {"world.image_size": -32}, ["image_size", "minimum"]),
    ("zero classes", {"world.n_classes": 0}, ["n_classes", "minimum"]),
    ("negative noise", {"world.noise": -0.1}, ["noise", "minimum"]),
    ("zero epochs", {"training.epochs": 0}, ["epochs", "minimum"]),
    ("shard size zero", {"ablation.shard_size": 0}, ["shard_size", "minimum"]),
    ("units per call negative", {"ablation.units_per_call": -1}, ["units_per_call", "minimum"]),
    ("ablation mode", {"ablation.mode": "random"}, ["mode", "is not one of"]),
    ("thresholds not a list", {"ablation.hurt_thresholds": "5"}, ["hurt_thresholds", "array"]),
    ("maps dtype", {"activations.maps_dtype": "int8"}, ["maps_dtype", "is not one of"]),
    ("quantile above one", {"concepts.quantile": 1.5}, ["quantile", "Maximum"]),
    ("quantile zero", {"concepts.quantile": 0}, ["quantile", "Minimum"]),
    ("concept counting rule", {"concepts.counting": "pixels"}, ["counting", "is not one of"]),
    ("duplicate layers", {"layers": ["features.relu5", "features.relu5"]}, ["layers", "unique"]),
    ("duplicate rotation seeds", {"rotation.seeds": [1, 1]}, ["seeds", "unique"]),
    ("zero bootstrap", {"analysis.bootstrap": 0}, ["bootstrap", "minimum"]),
    ("ranking fraction one", {"cumulative.ranking_fraction": 1.0}, ["ranking_fraction"]),
    ("dpi too low", {"figures.dpi": 10}, ["dpi", "minimum"]),
    ("unknown architecture", {"models.plain.arch": "notanet"}, ["arch", "notanet"]),
    ("model without arch", {"models.extra": {"batchnorm": True}}, ["arch", "required"]),
    ("reserved model name", {"models.world": {"arch": "tinyalex"}}, ["world", "models"]),
    ("layer that does not exist", {"layers": ["features.relu9"]}, ["layers", "features.relu5"]),
    ("empty model layers", {"models.plain.layers": []}, ["layers", "non-empty"]),
    ("unknown only_models", {"only_models": ["nonet"]}, ["only_models", "nonet"]),
    ("torchvision arch without weights", {"models.net": RESNET}, ["weights", "required"]),
    (
        "weights file missing",
        {"models.net": {**RESNET, "weights": "missing/resnet18.pth", "layers": ["layer4"]}},
        ["missing/resnet18.pth"],
    ),
]


@pytest.mark.parametrize("changes, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_rejected_before_any_job(
    tmp_path: Path, changes: dict[str, Any], fragments: list[str]
) -> None:
    config = write_config(tmp_path / "bad.yaml", changes)
    result = snakemake(tmp_path / "run", "-n", "--cores", "1", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "Job stats:" not in output and "jobid:" not in output, output[-2000:]
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output[-3000:]}"
    assert not (tmp_path / "run" / "results").exists()


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20
