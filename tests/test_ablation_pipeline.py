"""The pipeline's drop tables, end to end, against an independent full forward with a hook.

One small config (one trained tinyalex, one layer, one rotation) runs up to drops.csv four
times in the same folder, changing only ablation keys (and the maps dtype), so that only the
shard and merge jobs rerun: the hook fallback, `mode: mean`, the default method (linear shortcut
in the unit basis, suffix replay for the rotated basis) and float16 maps. The test then computes
every drop itself: the whole network on the eval images with a hook that replaces the unit (or
removes the rotated direction), counted per class by hand.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from workflow_runs import snakemake, write_config

from unitablation.images import ImageFolderSet, default_preprocess
from unitablation.models import ModelSpec, build_model
from unitablation.rotation import haar_rotation

pytestmark = pytest.mark.workflow

LAYER = "features.relu5"
SEED = 7
#: A model that learns something in seconds (62.5% on 3 classes), so that ablations flip some
#: predictions and the comparison is not between two tables of zeros.
MODEL = {"arch": "tinyalex", "batchnorm": False, "dropout": 0.0, "widths": [8, 12, 16, 16, 8]}
BASE = {
    "only_models": ["plain"],
    "models.plain": {**MODEL, "hidden": 32},
    "layers": [LAYER],
    "rotation.seeds": [SEED],
    "world.train_per_class": 30,
    "world.val_per_class": 8,
    "training.epochs": 10,
    "training.batch_size": 16,
}
#: scenario -> config changes; each run reuses the world, the model and (but for float16) the
#: stores of the previous one.
SCENARIOS = {
    "hook": {"ablation.method": "hook", "ablation.mode": "zero"},
    "mean": {"ablation.method": "auto", "ablation.mode": "mean"},
    "auto": {"ablation.method": "auto", "ablation.mode": "zero"},
    "float16": {
        "ablation.method": "auto",
        "ablation.mode": "zero",
        "activations.maps_dtype": "float16",
    },
}
BASES = ("unit", f"rot{SEED}")


def read_outputs(results: Path) -> dict[str, dict]:
    """Drop tables, HDF5 counts and the first shard log of each basis."""
    outputs = {}
    for basis in BASES:
        folder = results / "plain" / LAYER / basis
        with h5py.File(folder / "class_prob_drops.h5") as handle:
            arrays = {name: handle[name][:] for name in ("lost", "correct", "baseline_correct")}
            attrs = dict(handle.attrs)
        log = results / "logs/ablate_shard/plain" / LAYER / basis / "0000.log"
        outputs[basis] = {
            "drops": pd.read_csv(folder / "drops.csv"),
            "class_drops": pd.read_csv(folder / "class_drops.csv"),
            "log": log.read_text(),
            "attrs": attrs,
            **arrays,
        }
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run every scenario in one folder; keep each one's outputs and the final model files."""
    folder = tmp_path_factory.mktemp("ablation_pipeline")
    targets = [f"results/plain/{LAYER}/{basis}/drops.csv" for basis in BASES]
    outputs = {}
    for name, changes in SCENARIOS.items():
        config = write_config(folder / f"{name}.yaml", {**BASE, **changes})
        result = snakemake(folder / "run", "--cores", "2", *targets, config=config)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        outputs[name] = read_outputs(folder / "run" / "results")
        if name == "auto":  # the float32 store, for the float16 comparison
            store = folder / "run" / "results/plain/activations/eval" / f"{LAYER}.h5"
            shutil.copy(store, folder / "float32.h5")
    return {"outputs": outputs, "root": folder / "run", "float32": folder / "float32.h5"}


def trained_model(root: Path) -> torch.nn.Module:
    """The pipeline's trained model, rebuilt from its checkpoint and the config entry."""
    entry = BASE["models.plain"]
    spec = ModelSpec.from_config(entry, num_classes=3, image_size=32)
    model = build_model(spec)
    checkpoint = torch.load(root / "results/plain/model.pt", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def eval_images(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All eval images and labels, in the store's row order."""
    dataset = ImageFolderSet(root / "results/world/val", default_preprocess("tinyalex"))
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def forward_with(model: torch.nn.Module, images: torch.Tensor, edit=None) -> torch.Tensor:
    """Logits of the whole network, the layer's output passed through `edit` (if any)."""
    module = dict(model.named_modules())[LAYER]
    handle = module.register_forward_hook(lambda _m, _i, out: edit(out.clone())) if edit else None
    try:
        with torch.no_grad():
            return model(images)
    finally:
        if handle:
            handle.remove()


def layer_maps(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The layer's output on the eval images, captured during a plain forward."""
    captured = []
    forward_with(model, images, lambda out: captured.append(out) or out)
    return captured[0]


def by_hand(predictions: torch.Tensor, baseline: torch.Tensor, labels: torch.Tensor, k: int):
    """Per-class drops (points), overall drop (points) and gross losses of one ablation."""
    correct = (predictions == labels).numpy()
    base = (baseline == labels).numpy()
    sizes = np.bincount(labels.numpy(), minlength=k)
    class_drop = (
        100.0
        * (
            np.bincount(labels.numpy(), weights=base, minlength=k)
            - np.bincount(labels.numpy(), weights=correct, minlength=k)
        )
        / sizes
    )
    overall = 100.0 * (base.sum() - correct.sum()) / len(labels)
    lost = np.bincount(labels.numpy(), weights=base & ~correct, minlength=k)
    return class_drop, overall, lost


def expected_tables(root: Path, mode: str, basis: str) -> dict[str, np.ndarray]:
    """Every unit's drops computed from full forwards with a replacing hook."""
    model = trained_model(root)
    images, labels = eval_images(root)
    baseline_logits = forward_with(model, images)
    baseline = baseline_logits.argmax(1)
    maps = layer_maps(model, images)
    units = maps.shape[1]
    means = maps.mean(dim=(0, 2, 3)) if mode == "mean" else torch.zeros(units)
    rotation = torch.from_numpy(haar_rotation(units, SEED)).float() if basis != "unit" else None
    rows = {"class_drops": [], "overall": [], "lost": []}
    for unit in range(units):
        if rotation is None:

            def edit(out, unit=unit):
                out[:, unit] = means[unit]
                return out

        else:
            direction, value = rotation[unit], float(rotation[unit] @ means)

            def edit(out, direction=direction, value=value):
                coordinate = torch.einsum("c,bchw->bhw", direction, out)
                return out - direction.view(1, -1, 1, 1) * (coordinate - value).unsqueeze(1)

        predictions = forward_with(model, images, edit).argmax(1)
        class_drop, overall, lost = by_hand(predictions, baseline, labels, 3)
        rows["class_drops"].append(class_drop)
        rows["overall"].append(overall)
        rows["lost"].append(lost)
    baseline_correct = np.bincount(
        labels.numpy(), weights=(baseline == labels).numpy(), minlength=3
    )
    return {
        **{key: np.array(value) for key, value in rows.items()},
        "baseline_correct": baseline_correct,
        "logits": baseline_logits.numpy(),
    }


def assert_matches(output: dict, expected: dict) -> None:
    """The pipeline's tables equal the hand-computed ones (CSV floats have 6 digits)."""
    classes = list(output["class_drops"].columns[1:])
    np.testing.assert_allclose(
        output["class_drops"][classes].to_numpy(), expected["class_drops"], atol=1e-4
    )
    np.testing.assert_allclose(output["drops"]["overall_drop"], expected["overall"], atol=1e-4)
    np.testing.assert_array_equal(output["lost"], expected["lost"])
    np.testing.assert_array_equal(output["drops"]["n_lost"], expected["lost"].sum(1))
    np.testing.assert_array_equal(output["baseline_correct"], expected["baseline_correct"])


@pytest.mark.parametrize("scenario", ["hook", "mean", "auto"])
@pytest.mark.parametrize("basis", BASES)
def test_drops_equal_a_full_forward_with_a_hook(runs, scenario: str, basis: str) -> None:
    output = runs["outputs"][scenario][basis]
    mode = SCENARIOS[scenario]["ablation.mode"]
    expected = expected_tables(runs["root"], mode, basis)
    assert_matches(output, expected)
    assert expected["lost"].sum() > 0, "no ablation changed a prediction: the check is empty"
    assert (output["drops"]["baseline_mismatches"] == 0).all()
    assert output["attrs"]["mode"] == mode
    method = {"hook": "hook", "mean": "linear", "auto": "linear"}[scenario]
    if basis != "unit" and scenario != "hook":
        method = "suffix"
    assert (output["drops"]["method"] == method).all()


def test_stored_logits_are_what_the_test_recomputes(runs) -> None:
    """The test's own forward sees the pipeline's inputs: its logits equal the stored ones."""
    expected = expected_tables(runs["root"], "zero", "unit")
    with h5py.File(runs["float32"]) as handle:
        np.testing.assert_allclose(handle["logits"][:], expected["logits"], rtol=1e-5, atol=1e-5)


def test_float16_maps_record_their_mismatches(runs) -> None:
    """float16 maps: the baseline comes from the stored maps, and the tables count how many
    eval predictions differ from the full-precision network."""
    output = runs["outputs"]["float16"]["unit"]
    model = trained_model(runs["root"])
    images, labels = eval_images(runs["root"])
    full = forward_with(model, images).argmax(1)
    rounded = forward_with(model, images, lambda out: out.half().float()).argmax(1)
    mismatches = int((full != rounded).sum())
    assert (output["drops"]["baseline_mismatches"] == mismatches).all()
    assert output["attrs"]["baseline_mismatches"] == mismatches
    assert output["attrs"]["baseline_source"] == "float16 maps"
    hits = np.bincount(labels.numpy(), weights=(rounded == labels).numpy(), minlength=3)
    np.testing.assert_array_equal(output["baseline_correct"], hits)
    assert "differ from the stored full-network logits" in output["log"]


def test_a_module_called_twice_is_refused_before_any_job(tmp_path: Path) -> None:
    """torchvision ResNet-18's `layer4.1.relu` runs twice per forward: `snakemake -n` fails at
    parse time naming the model, the module, the number of calls and the enclosing block."""
    weights = tmp_path / "resnet18.pt"
    weights.write_bytes(b"never read by a dry run")
    entry = {
        "arch": "resnet18",
        "num_classes": 3,
        "eval_images": "val",
        "concept_set": "broden",
        "weights": str(weights),
        "layers": ["layer4", "layer4.1.relu"],
    }
    config = write_config(tmp_path / "bad.yaml", {"models.net": entry, "only_models": ["net"]})
    result = snakemake(tmp_path / "run", "-n", "--cores", "1", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "Job stats:" not in output and "jobid:" not in output, output[-2000:]
    for fragment in (
        "config error in models.net.layers",
        "model 'net' (resnet18): layer layer4.1.relu is called 2 times",
        "study the block that encloses it instead: layer4.1",
    ):
        assert fragment in output, f"{fragment!r} not in:\n{output[-3000:]}"
    assert not (tmp_path / "run" / "results").exists()


def ablate_shard_script():
    """workflow/scripts/ablate_shard.py as a module (its Snakemake adapter stays idle)."""
    path = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "ablate_shard.py"
    spec = importlib.util.spec_from_file_location("ablate_shard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_baseline_that_disagrees_with_the_stored_logits_fails_the_shard(runs, tmp_path) -> None:
    """Stored logits that the engine's own unablated pass cannot reproduce (here: three images
    given another top class, far from any tie) stop a float32 shard, naming model, layer and
    count; with float16 maps the same disagreement is recorded instead."""
    root = runs["root"]
    store = tmp_path / "store.h5"
    shutil.copy(runs["float32"], store)
    with h5py.File(store, "r+") as handle:
        logits = handle["logits"][:]
        other = (logits[:3].argmax(1) + 1) % 3
        logits[:3] += 10.0 * np.eye(3, dtype=np.float32)[other]
        handle["logits"][:] = logits
    settings = {"mode": "zero", "method": "auto", "units_per_call": 3, "batch_size": 5}
    arguments = {
        "weights": str(root / "results/plain/model.pt"),
        "images_dir": str(root / "results/world/val"),
        "model_name": "plain",
        "layer": LAYER,
        "basis": "unit",
        "units": [0, 1],
        "model_entry": {**BASE["models.plain"], "image_size": 32},
        "ablation": {**settings, "tie_margin": 1e-5},
        "device_name": "cpu",
        "threads": 1,
    }
    main = ablate_shard_script().main
    shard = tmp_path / "0000.h5"
    message = rf"model 'plain', layer {LAYER}: .*\(float32 maps\) predicts 3 eval image\(s\)"
    with pytest.raises(ValueError, match=message):
        main(str(store), shard_out=str(shard), **arguments)
    assert not shard.exists()
    with h5py.File(store, "r+") as handle:  # the same store with float16 maps
        group = handle["layers"][LAYER]
        maps = group["maps"][:]
        del group["maps"]
        group.create_dataset("maps", data=maps.astype(np.float16))
    main(str(store), shard_out=str(shard), **arguments)
    with h5py.File(shard) as handle:
        assert handle.attrs["baseline_source"] == "float16 maps"
        assert handle.attrs["baseline_mismatches"] >= 3
