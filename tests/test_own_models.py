"""Issue 13's acceptance, end to end on CPU: any PyTorch network, any layer layout.

One Snakemake run of the demo in docs/models.md (its config, factory files and weight script are
read from the doc, so the doc's example is what runs): a torchvision CNN outside the old list
(mobilenet_v3_small, a whole pickled module), torchvision's VisionTransformer from a factory
(safetensors weights), timm resnet18 (wrapped state dict, no concept set), timm
vit_tiny_patch16_224 at 32 px with depth 2, and a user's residual CNN from a factory file with
no weights file. The run builds every table up to results/summary.md (the figures, which the
doc's command also draws, are left out for time). The test then checks, with code of its own:

- every class drop of every studied layer against a full forward of the independently loaded
  network with a forward hook that zeroes the unit at every position or token;
- the method each shard used (linear shortcut, suffix replay, or the hook fallback inside
  residual blocks) against the fastest exact one for that layer, as the doc's table states;
- the concept IoU of a ViT token layer on the world against a per-image hand loop over the
  run's stored patch-token maps and the world's Broden labels.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from workflow_runs import ROOT, snakemake

from unitablation.broden import read_broden

pytestmark = pytest.mark.workflow

DOC = ROOT / "docs" / "models.md"
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
#: Where the unit axis lies in each studied layer's output (conv: dim 1; tokens: last dim).
TOKEN_LAYERS = {
    ("tiny_vit", "encoder.layers.encoder_layer_1"),
    ("tiny_vit", "encoder.layers.encoder_layer_0.mlp.1"),
    ("timm_vit", "blocks.1"),
}
#: The fastest exact method of each studied layer (docs/models.md says why).
EXPECTED_METHODS = {
    ("mobilenet", "features.12"): "linear",
    ("tiny_vit", "encoder.layers.encoder_layer_1"): "suffix",
    ("tiny_vit", "encoder.layers.encoder_layer_0.mlp.1"): "hook",
    ("timm_resnet", "layer4"): "linear",
    ("timm_vit", "blocks.1"): "suffix",
    ("my_net", "block.relu"): "hook",
    ("my_net", "block"): "linear",
}
#: How each shard's log names its route (the linear method: shortcut or closed form).
LOGGED_ROUTES = {
    ("mobilenet", "features.12"): "linear shortcut into Linear",
    ("tiny_vit", "encoder.layers.encoder_layer_1"): "suffix replay (torch.fx",
    ("tiny_vit", "encoder.layers.encoder_layer_0.mlp.1"): "full forward with a replacing hook",
    ("timm_resnet", "layer4"): "closed form (linear head) into Linear",
    ("timm_vit", "blocks.1"): "suffix replay (torch.fx",
    ("my_net", "block.relu"): "full forward with a replacing hook",
    ("my_net", "block"): "closed form (linear head) into Linear",
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TIE_MARGIN = 1e-5
IOU_LAYER = ("tiny_vit", "encoder.layers.encoder_layer_1")


def doc_files() -> dict[str, str]:
    """The files the doc shows, by name (`<!-- file: name -->` above a fenced block)."""
    return dict(FILE_BLOCK.findall(DOC.read_text()))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The doc's demo, run once in a fresh folder: weights written, then the whole pipeline."""
    workdir = tmp_path_factory.mktemp("own_models")
    files = doc_files()
    assert set(files) == {"own_models.yaml", "my_net.py", "tiny_vit.py", "make_weights.py"}
    for name, text in files.items():
        (workdir / name).write_text(text)
    made = subprocess.run(
        [sys.executable, "make_weights.py"], cwd=workdir, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    # Everything up to the summary (every table of every layer); figures only cost time here.
    targets = ["results/summary.md", f"results/{IOU_LAYER[0]}/{IOU_LAYER[1]}/unit/concepts.h5"]
    result = snakemake(workdir, "--cores", "2", *targets, config=workdir / "own_models.yaml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


def config(run: Path) -> dict:
    """The demo config as the run read it."""
    return yaml.safe_load((run / "own_models.yaml").read_text())


def import_file(path: Path) -> ModuleType:
    """A factory file as a module, imported by the test itself."""
    spec = importlib.util.spec_from_file_location(f"own_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_network(run: Path, name: str) -> torch.nn.Module:
    """Each network built and loaded by the test, not by the pipeline's loaders."""
    import timm
    from safetensors.torch import load_file

    entry = config(run)["models"][name]
    weights = run / entry["weights"] if "weights" in entry else None
    if name == "mobilenet":
        model = torch.load(weights, weights_only=False)
    elif name == "tiny_vit":
        model = import_file(run / "tiny_vit.py").build(**entry["kwargs"])
        model.load_state_dict(load_file(weights))
    elif name == "timm_resnet":
        model = timm.create_model("resnet18", pretrained=False, num_classes=3)
        wrapped = torch.load(weights, weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("module."): v for k, v in wrapped.items()})
    elif name == "timm_vit":
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=3, **entry["model_kwargs"]
        )
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        model = import_file(run / "my_net.py").build(**entry["kwargs"])
    return model.eval()


def expected_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the source publishes (timm's pretrained config; ImageNet otherwise)."""
    if name == "timm_vit":
        import timm

        cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224")
        return tuple(cfg.mean), tuple(cfg.std)
    if name == "timm_resnet":
        import timm

        cfg = timm.models.get_pretrained_cfg("resnet18")
        return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET


def load_images(root: Path, paths: list[str], name: str) -> torch.Tensor:
    """Images as the pipeline must feed them: RGB in [0, 1], normalised, no resize or crop."""
    mean, std = expected_normalisation(name)
    pixels = np.stack(
        [np.asarray(Image.open(root / p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    )
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return (tensor - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def eval_set(run: Path, name: str, layer: str) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Eval images in the store's row order, labels from the folder names, class names."""
    val = run / "results/world/val"
    classes = sorted(p.name for p in val.iterdir() if p.is_dir())
    with h5py.File(run / f"results/{name}/activations/eval/{layer}.h5") as store:
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in store["paths"][()]]
        preprocess = json.loads(store.attrs["preprocess"])
    mean, std = expected_normalisation(name)
    assert preprocess["resize"] is None and preprocess["crop"] is None, preprocess
    assert np.allclose(preprocess["mean"], mean) and np.allclose(preprocess["std"], std)
    assert paths == sorted(paths)  # class folders in index order, files sorted within
    labels = np.array([classes.index(p.split("/")[0]) for p in paths])
    return load_images(val, paths, name), labels, classes


def logits_with(model: torch.nn.Module, layer: str, images: torch.Tensor, edit=None):
    """Logits of the whole network with `edit` applied to the layer's output (if given)."""
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(lambda _m, _i, out: edit(out.clone())) if edit else None
    try:
        with torch.no_grad():
            return model(images)
    finally:
        if handle:
            handle.remove()


def zero_unit(unit: int, tokens: bool):
    """An edit zeroing one unit everywhere: a channel of (N, C, H, W), a feature of (N, L, C)."""

    def edit(out: torch.Tensor) -> torch.Tensor:
        if tokens:
            out[..., unit] = 0.0
        else:
            out[:, unit] = 0.0
        return out

    return edit


def hook_class_drops(run: Path, name: str, layer: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(units x classes drops in points, tolerated difference in points, classes) by hand."""
    model = load_network(run, name)
    images, labels, classes = eval_set(run, name, layer)
    sizes = np.bincount(labels, minlength=len(classes))
    baseline = logits_with(model, layer, images).argmax(1).numpy() == labels
    base_correct = np.bincount(labels, weights=baseline, minlength=len(classes))
    captured = []
    logits_with(model, layer, images, lambda out: captured.append(out) or out)
    n_units = captured[0].shape[-1 if (name, layer) in TOKEN_LAYERS else 1]
    drops = np.zeros((n_units, len(classes)))
    slack = np.zeros_like(drops)
    for unit in range(n_units):
        logits = logits_with(model, layer, images, zero_unit(unit, (name, layer) in TOKEN_LAYERS))
        top2 = torch.topk(logits, 2, dim=1).values
        tie = ((top2[:, 0] - top2[:, 1]) < TIE_MARGIN).numpy()
        correct = logits.argmax(1).numpy() == labels
        drops[unit] = 100.0 * (base_correct - np.bincount(labels, correct, len(classes))) / sizes
        slack[unit] = 100.0 * np.bincount(labels, tie, len(classes)) / sizes
    return drops, slack, classes


@pytest.mark.parametrize(("name", "layer"), sorted(EXPECTED_METHODS))
def test_class_drops_equal_a_full_forward_with_a_zeroing_hook(
    run: Path, name: str, layer: str
) -> None:
    expected, slack, classes = hook_class_drops(run, name, layer)
    table = pd.read_csv(run / f"results/{name}/{layer}/unit/class_drops.csv")
    assert table["unit"].tolist() == list(range(len(expected)))
    measured = table[[str(c) for c in classes]].to_numpy(np.float64)
    assert np.all(np.abs(measured - expected) <= slack + 1e-4), (name, layer)
    assert slack.sum() <= 0.02 * slack.size * 100.0  # near ties stay rare


def test_some_ablation_changes_predictions(run: Path) -> None:
    """The exactness checks above compare more than tables of zeros."""
    moved = [
        (name, layer)
        for name, layer in EXPECTED_METHODS
        if pd.read_csv(run / f"results/{name}/{layer}/unit/drops.csv")["n_lost"].sum() > 0
    ]
    assert len(moved) >= 4, moved


@pytest.mark.parametrize(("name", "layer"), sorted(EXPECTED_METHODS))
def test_each_shard_used_the_fastest_exact_method(run: Path, name: str, layer: str) -> None:
    folder = run / f"results/{name}/{layer}/unit"
    shards = sorted((folder / "shards").glob("*.h5"))
    assert shards
    for shard in shards:
        with h5py.File(shard) as handle:
            assert handle.attrs["method"] == EXPECTED_METHODS[(name, layer)], shard
    assert set(pd.read_csv(folder / "drops.csv")["method"]) == {EXPECTED_METHODS[(name, layer)]}
    log = (run / f"results/logs/ablate_shard/{name}/{layer}/unit/0000.log").read_text()
    assert LOGGED_ROUTES[(name, layer)] in log


def test_the_docs_method_table_is_what_ran() -> None:
    rows = re.findall(r"^\| `(\w+)` `([\w.]+)` \| (\w+) \|", DOC.read_text(), re.MULTILINE)
    assert {(m, layer): method for m, layer, method in rows} == EXPECTED_METHODS


def hand_iou(maps: np.ndarray, broden, rows: list[int], quantile: float) -> np.ndarray:
    """IoU of one unit's maps (N, h, w) with every label, netdissect counting, image by image:
    upsample each map bilinearly to the segmentation size, threshold at the unit's top-quantile
    value over all positions, count every mask layer's occurrences, and the unit's mask area
    over images where the label's category has any label."""
    threshold = np.quantile(maps.astype(np.float64), 1 - quantile)
    numbers = sorted(n for n, c in broden.category_of_label.items() if c in broden.categories)
    inter = np.zeros(len(numbers))
    truth = np.zeros(len(numbers))
    act = np.zeros(len(numbers))
    for i, row in enumerate(rows):
        record = broden.records[row]
        labels = broden.load_labels(row)
        mask = (
            F.interpolate(
                torch.from_numpy(maps[i].astype(np.float32))[None, None],
                size=(record.sh, record.sw),
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            > threshold
        )
        for k, number in enumerate(numbers):
            stack = labels.get(broden.category_of_label[number])
            if stack is None or not (stack > 0).any():
                continue
            hits = stack == number
            inter[k] += int((hits & mask[None]).sum())
            truth[k] += int(hits.sum())
            act[k] += int(mask.sum())
    return inter / (act + truth - inter + 1e-10), numbers, threshold


def test_token_layer_concept_iou_equals_a_hand_loop(run: Path) -> None:
    name, layer = IOU_LAYER
    store_path = run / f"results/{name}/activations/concept/{layer}.h5"
    with h5py.File(store_path) as store:
        maps = store[f"layers/{layer}/maps"][()]
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in store["paths"][()]]
    assert maps.shape[1:] == (32, 4, 4)  # hidden_dim 32 features, 4 x 4 patch grid
    broden_dir = run / "results/world/broden"
    broden = read_broden(broden_dir)
    row_of = {record.image: k for k, record in enumerate(broden.records)}
    rows = [row_of[p] for p in paths]
    # the stored maps are the patch tokens of the test's own forward, laid on their grid
    model = load_network(run, name)
    images = load_images(broden_dir / "images", paths, name)
    captured = []
    logits_with(model, layer, images, lambda out: captured.append(out) or out)
    tokens = captured[0].numpy()
    grid = tokens[:, 1:, :].reshape(len(paths), 4, 4, 32).transpose(0, 3, 1, 2)
    assert np.allclose(maps, grid, atol=1e-5)
    table = pd.read_csv(run / f"results/{name}/{layer}/unit/concepts.csv")
    unit = int(table.loc[table["iou"].idxmax(), "unit"])
    quantile = 0.005  # concepts.quantile default
    expected, numbers, threshold = hand_iou(maps[:, unit], broden, rows, quantile)
    with h5py.File(run / f"results/{name}/{layer}/unit/concepts.h5") as handle:
        measured = handle["iou"][unit]
        columns = list(handle["label_numbers"][()])
        assert handle["thresholds"][unit] == pytest.approx(threshold, abs=1e-6)
    order = [columns.index(n) for n in numbers]
    assert np.allclose(measured[order], expected, rtol=0, atol=1e-9)
    assert expected.max() > 0
    assert table.loc[table["unit"] == unit, "iou"].iloc[0] == pytest.approx(expected.max())


def test_world_concept_set_for_any_source_and_none_for_timm_resnet(run: Path) -> None:
    for name, entry in config(run)["models"].items():
        for layer in entry["layers"]:
            concepts = run / f"results/{name}/{layer}/unit/concepts.csv"
            assert concepts.is_file() == (entry.get("concept_set") == "world"), (name, layer)
    summary = (run / "results/summary.md").read_text()
    assert "model `timm_resnet`: no concept set, concept IoU not measured" in summary
    assert summary.count("no concept set, concept IoU not measured") == 1
