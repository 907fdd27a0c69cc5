"""The real pipeline on a tiny config: from the generated world to HDF5 activations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from unitablation.store import ActivationStore

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
VARIANTS = ("plain", "batchnorm", "dropout", "batchnorm_dropout")

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: Path = TINY) -> subprocess.CompletedProcess:
    """Run Snakemake on the project's Snakefile in `workdir` with `config`."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        *args,
    ]
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_tiny_run_writes_every_store(tiny_run: Path) -> None:
    config = yaml.safe_load(TINY.read_text())
    world = config["world"]
    for variant in VARIANTS:
        results = tiny_run / "results" / variant
        with ActivationStore(results / "activations" / "eval.h5") as store:
            assert len(store) == world["n_classes"] * world["val_per_class"]
            counts = np.bincount(store.labels(), minlength=world["n_classes"])
            assert counts.tolist() == [world["val_per_class"]] * world["n_classes"]
            assert store.logits().shape == (len(store), world["n_classes"])
            assert store.layers == config["layers"]
            assert len(store.classes) == world["n_classes"]
            relu5 = store.layer("features.relu5")
            assert relu5["maps"].shape == (len(store), 8, 4, 4)
            np.testing.assert_allclose(relu5["mean"][:], relu5["maps"][:].mean((2, 3)), atol=1e-6)
            assert (relu5["maps"][:] >= 0).all()  # post-ReLU
            assert (
                store.file.attrs["split"] == "eval"
                and len(store.file.attrs["weights_sha256"]) == 64
            )
            paths = [path.decode() for path in store.file["paths"][:]]
            assert all((tiny_run / "results/world/val" / path).is_file() for path in paths)
        with ActivationStore(results / "activations" / "concept.h5") as store:
            assert len(store) == world["concept_images"]
            assert (store.labels() == -1).all()
            assert store.layer("features.relu4")["maps"].shape[1:] == (8, 4, 4)
        baseline = pd.read_csv(results / "baseline.csv")
        assert list(baseline["class"])[-1] == "overall"
        assert baseline["n_images"].iloc[-1] == len(paths)
        assert baseline["n_correct"].iloc[:-1].sum() == baseline["n_correct"].iloc[-1]
        history = pd.read_csv(results / "training.csv")
        assert history["epoch"].tolist() == [1]
        log = (tiny_run / "results/logs/extract_activations" / f"{variant}_eval.log").read_text()
        assert "device: cpu" in log and "100%" in log


def test_broden_and_image_folder_layout(tiny_run: Path) -> None:
    world = tiny_run / "results" / "world"
    assert sorted(p.name for p in world.iterdir()) == ["broden", "train", "val"]
    index = pd.read_csv(world / "broden" / "index.csv")
    assert list(index.columns) == [
        "image",
        "split",
        "ih",
        "iw",
        "sh",
        "sw",
        "color",
        "object",
        "part",
        "material",
        "scene",
        "texture",
    ]
    assert (index["sh"] * 2 == index["ih"]).all()
    for name in ("category.csv", "label.csv", "c_color.csv", "c_object.csv"):
        assert (world / "broden" / name).is_file()


def test_second_dry_run_has_nothing_to_do(tiny_run: Path) -> None:
    result = snakemake(tiny_run, "-n", "--cores", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_wrong_layer_fails_at_start_listing_valid_names(tmp_path: Path) -> None:
    config = yaml.safe_load(TINY.read_text())
    config["models"]["plain"]["layers"] = ["features.relu7"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--cores", "1", config=bad)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "models.plain.layers" in output and "['features.relu7']" in output
    assert "valid module paths are: " in output and "features.relu5" in output
    assert not (tmp_path / "results").exists()


def test_schema_rejects_bad_values_before_any_job(tmp_path: Path) -> None:
    config = yaml.safe_load(TINY.read_text())
    config["world"]["n_classes"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--cores", "1", config=bad)
    assert result.returncode != 0 and "n_classes" in result.stdout + result.stderr


def test_lint_is_clean(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "--lint", config=ROOT / "config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_torchvision_model_from_local_weights(tmp_path: Path) -> None:
    """A torchvision architecture with a local checkpoint runs through the same rules."""
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    config = yaml.safe_load(TINY.read_text())
    config["models"] = {
        "resnet": {
            "arch": "resnet18",
            "weights": str(weights),
            "num_classes": 3,
            "eval_images": "results/world/val",
            "concept_set": "results/world/broden",
            "layers": ["layer3", "layer4"],
            "preprocess": {"resize": None, "crop": None},
        }
    }
    path = tmp_path / "resnet.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "2", config=path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / "results" / "resnet" / "model.pt").exists()  # nothing trained
    with ActivationStore(tmp_path / "results/resnet/activations/eval.h5") as store:
        assert store.layer("layer4")["maps"].shape == (12, 512, 1, 1)
        assert store.layer("layer3")["maps"].shape == (12, 256, 2, 2)
        assert store.file.attrs["arch"] == "resnet18"
    baseline = pd.read_csv(tmp_path / "results/resnet/baseline.csv")
    assert baseline["n_images"].iloc[-1] == 12
