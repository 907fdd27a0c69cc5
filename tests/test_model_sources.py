"""Model sources: torchvision's registry, timm, the user's factory; weights formats; the
preprocessing each source publishes. Tiny models on the CPU, nothing downloaded."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from unitablation.images import model_input_size, model_preprocess
from unitablation.model_sources import (
    EntryError,
    check_entry,
    describe_source,
    factory_file,
)
from unitablation.models import (
    ModelSpec,
    build_model,
    check_layers,
    load_configured_model,
    probe_model,
)
from unitablation.weights import read_weights

CPU = torch.device("cpu")


def layer_units(spec: ModelSpec, layers: list[str]) -> dict[str, int]:
    """Units of each layer, from the layouts check_layers returns."""
    return {layer: layout.units for layer, layout in check_layers(spec, layers, "m").items()}


#: A user's own model file: a seeded factory, one returning no module, one with a 5-D layer.
FACTORY = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class Volume(nn.Module):
    def forward(self, x):
        return x.unsqueeze(2)


class VolumeNet(TinyNet):
    def __init__(self) -> None:
        super().__init__(4, 3)
        self.volume = Volume()

    def forward(self, x):
        return self.fc(self.pool(self.volume(self.relu(self.conv(x))).squeeze(2)).flatten(1))


def build(width: int, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet(width, classes)


def not_a_module(width: int = 2):
    return {"width": width}


class Features(TinyNet):
    def forward(self, x):
        return {"features": self.relu(self.conv(x))}


def no_logits() -> nn.Module:
    return Features(4, 2)


def volumes() -> nn.Module:
    return VolumeNet()


def needs_cpu() -> nn.Module:
    width = int(torch.ones(4).sum().item())  # .item() has no value on the meta device
    return TinyNet(width, 2)
"""


@pytest.fixture
def factory_path(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(FACTORY)
    return path


def randomised(model: nn.Module, seed: int = 1) -> nn.Module:
    """The model with every float parameter and buffer drawn afresh (so loading is visible)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.2 + 0.05)
    return model.eval()


def same_outputs(left: nn.Module, right: nn.Module, side: int) -> bool:
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return torch.equal(left.eval()(images), right.eval()(images))


# --- torchvision ----------------------------------------------------------------------------


#: squeezenet's classifier is a 1 x 1 conv: its width is found without a Linear layer.
@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1"])
def test_torchvision_builders_outside_the_old_list_load_a_state_dict(
    tmp_path: Path, arch: str
) -> None:
    original = randomised(torchvision.models.get_model(arch, weights=None, num_classes=3))
    path = tmp_path / f"{arch}.pth"
    torch.save(original.state_dict(), path)
    entry = {"arch": arch, "preprocess": {"resize": 64, "crop": 64}}
    model, spec, classes = load_configured_model(entry, path, CPU)
    assert classes == ["0", "1", "2"] and spec.num_classes == 3 and spec.side == 64
    assert same_outputs(model, original, 64)


def test_torchvision_prefix_form_builds_the_same_network() -> None:
    torch.manual_seed(0)
    plain = build_model(ModelSpec.from_config({"arch": "resnet18"}, 4, 64))
    torch.manual_seed(0)
    prefixed = build_model(ModelSpec.from_config({"arch": "torchvision:resnet18"}, 4, 64))
    assert same_outputs(plain, prefixed, 32)
    assert describe_source({"arch": "torchvision:resnet18"}) == "torchvision:resnet18"
    assert describe_source({"arch": "resnet18"}) == "torchvision:resnet18"


def test_unknown_torchvision_name_lists_close_names() -> None:
    with pytest.raises(
        EntryError, match=r"'mobilenet_v3_smal'; closest: mobilenet_v3_small"
    ) as err:
        check_entry({"arch": "mobilenet_v3_smal", "weights": "w.pt"})
    assert err.value.key == "arch"
    with pytest.raises(EntryError, match="required") as err:
        check_entry({"arch": "efficientnet_b0"})
    assert err.value.key == "weights"


def test_torchvision_preprocessing_comes_from_the_weights_metadata() -> None:
    recipe = torchvision.models.get_model_weights("efficientnet_b0").IMAGENET1K_V1.transforms()
    preprocess = model_preprocess({"arch": "efficientnet_b0"})
    assert (preprocess.resize, preprocess.crop) == (recipe.resize_size[0], recipe.crop_size[0])
    assert list(preprocess.mean) == list(recipe.mean) and list(preprocess.std) == list(recipe.std)
    assert preprocess.interpolation == recipe.interpolation.value == "bicubic"
    inception = model_preprocess({"arch": "inception_v3"})
    assert (inception.resize, inception.crop) == (342, 299)
    assert model_input_size({"arch": "inception_v3"}, 64) == 299
    # A reduced vit_b_16 keeps the recipe's crop fraction (224 / 256) at its own side.
    vit = model_preprocess({"arch": "vit_b_16", "model_kwargs": {"image_size": 32}})
    assert (vit.crop, vit.resize) == (32, round(32 * 256 / 224))


def test_old_torchvision_entries_keep_their_preprocessing_byte_for_byte() -> None:
    """The provenance string stored before sources existed: ImageNet recipe, bilinear implicit."""
    old = json.dumps(
        {
            "crop": 224,
            "mean": [0.485, 0.456, 0.406],
            "resize": 256,
            "std": [0.229, 0.224, 0.225],
        },
        sort_keys=True,
    )
    for arch in ("alexnet", "vgg16", "resnet50", "resnet101", "densenet161", "googlenet"):
        assert model_preprocess({"arch": arch}).to_json() == old, arch
    tiny = json.dumps(
        {"crop": None, "mean": [0.5, 0.5, 0.5], "resize": None, "std": [0.25, 0.25, 0.25]},
        sort_keys=True,
    )
    assert model_preprocess({"arch": "tinyalex"}).to_json() == tiny
    override = model_preprocess({"arch": "resnet50", "preprocess": {"resize": 224, "crop": 224}})
    assert (override.resize, override.crop, override.mean) == (224, 224, (0.485, 0.456, 0.406))


# --- timm -----------------------------------------------------------------------------------

TIMM_CASES = [
    ("resnet18", {}, 32),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32),
]


@pytest.mark.parametrize("name, kwargs, side", TIMM_CASES)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_models_load_safetensors_and_pth(
    tmp_path: Path, name: str, kwargs: dict[str, Any], side: int, suffix: str
) -> None:
    original = randomised(timm.create_model(name, pretrained=False, num_classes=4, **kwargs))
    path = tmp_path / f"weights{suffix}"
    state = {key: value.contiguous() for key, value in original.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    entry = {"arch": f"timm:{name}", "model_kwargs": kwargs, "preprocess": {"crop": side}}
    model, spec, classes = load_configured_model(entry, path, CPU)
    assert len(classes) == 4 and spec.arch == f"timm:{name}"
    assert same_outputs(model, original, side)


@pytest.mark.parametrize("name, kwargs, side", TIMM_CASES)
def test_timm_preprocessing_is_its_pretrained_config(
    name: str, kwargs: dict[str, Any], side: int
) -> None:
    config = timm.models.get_pretrained_cfg(name)
    crop = kwargs.get("img_size", config.input_size[-1])
    preprocess = model_preprocess({"arch": f"timm:{name}", "model_kwargs": kwargs})
    assert preprocess.crop == crop and preprocess.resize == round(crop / config.crop_pct)
    assert preprocess.mean == tuple(config.mean) and preprocess.std == tuple(config.std)
    assert preprocess.interpolation == config.interpolation
    override = {"crop": 20, "mean": [0.1, 0.2, 0.3]}
    changed = model_preprocess(
        {"arch": f"timm:{name}", "model_kwargs": kwargs, "preprocess": override}
    )
    assert changed.crop == 20 and changed.mean == (0.1, 0.2, 0.3)
    assert changed.resize == preprocess.resize and changed.std == preprocess.std


def test_timm_vit_token_layers_have_feature_units_and_a_typo_lists_close_names() -> None:
    entry = {"arch": "timm:vit_tiny_patch16_224", "model_kwargs": {"img_size": 32}}
    spec = ModelSpec.from_config(entry, 5, 64)
    assert spec.side == 32
    units = layer_units(spec, ["blocks.0", "blocks.1.mlp.fc1", "head"])
    assert units == {"blocks.0": 192, "blocks.1.mlp.fc1": 768, "head": 5}
    layouts = check_layers(spec, ["blocks.0"], "vit")
    assert layouts["blocks.0"].kind == "tokens" and layouts["blocks.0"].prefix == 1
    assert describe_source(entry) == "timm:vit_tiny_patch16_224 {img_size: 32}"
    with pytest.raises(EntryError, match="closest: .*vit_tiny_patch16_224") as err:
        check_entry({"arch": "timm:vit_tiny_patch16", "weights": "w.pt"})
    assert err.value.key == "arch"


# --- factory --------------------------------------------------------------------------------


def test_factory_without_weights_is_the_factory_s_own_module(factory_path: Path) -> None:
    entry = {"factory": f"{factory_path}:build", "kwargs": {"width": 8}, "input_size": 16}
    check_entry(entry)
    model, spec, classes = load_configured_model(entry, factory_path, CPU)
    direct = runpy.run_path(str(factory_path))["build"](width=8)
    assert same_outputs(model, direct, 16) and classes == ["0", "1", "2"]
    assert spec.side == 16 and layer_units(spec, ["relu", "fc"]) == {"relu": 8, "fc": 3}
    assert describe_source(entry) == f"factory {factory_path}:build {{width: 8}}"
    assert factory_file(entry["factory"]) == str(factory_path)


def test_factory_with_a_state_dict(factory_path: Path, tmp_path: Path) -> None:
    original = randomised(runpy.run_path(str(factory_path))["build"](width=5, classes=2))
    weights = tmp_path / "own.pt"
    torch.save({"state_dict": original.state_dict(), "classes": ["cat", "dog"]}, weights)
    entry = {"factory": f"{factory_path}:build", "kwargs": {"width": 5, "classes": 2}}
    model, _, classes = load_configured_model({**entry, "weights": str(weights)}, weights, CPU)
    assert classes == ["cat", "dog"] and same_outputs(model, original, 12)


def test_factory_kwargs_are_bound_to_its_signature(factory_path: Path) -> None:
    with pytest.raises(EntryError, match=r"'widht' is no argument \(closest: width\)") as err:
        check_entry({"factory": f"{factory_path}:build", "kwargs": {"widht": 8}})
    assert err.value.key == "kwargs"
    with pytest.raises(EntryError, match="missing a required argument: 'width'") as err:
        check_entry({"factory": f"{factory_path}:build"})
    assert err.value.key == "kwargs"
    with pytest.raises(EntryError, match="defines no function 'buld'") as err:
        check_entry({"factory": f"{factory_path}:buld"})
    assert err.value.key == "factory"


def test_a_factory_that_returns_no_module_is_refused(factory_path: Path) -> None:
    spec = ModelSpec.from_config({"factory": f"{factory_path}:not_a_module"}, 2, 64)
    with pytest.raises(EntryError, match="returned dict, not a torch.nn.Module") as err:
        probe_model(spec)
    assert err.value.key == "factory"


def test_a_factory_that_cannot_run_on_meta_is_checked_on_the_cpu(factory_path: Path) -> None:
    spec = ModelSpec.from_config({"factory": f"{factory_path}:needs_cpu", "input_size": 8}, 2, 64)
    model = probe_model(spec)
    assert next(model.parameters()).device.type == "cpu"
    assert layer_units(spec, ["relu", "fc"]) == {"relu": 4, "fc": 2}


def test_an_input_side_the_model_cannot_take_names_the_preprocessing() -> None:
    entry = {"arch": "timm:vit_tiny_patch16_224", "model_kwargs": {"img_size": 32}}
    spec = ModelSpec.from_config({**entry, "preprocess": {"crop": 48}}, 2, 64)
    with pytest.raises(EntryError, match=r"cannot run on a 1 x 3 x 48 x 48 input") as err:
        probe_model(spec)
    assert err.value.key == "preprocess"


def test_a_model_whose_output_is_no_logits_is_refused(factory_path: Path) -> None:
    spec = ModelSpec.from_config({"factory": f"{factory_path}:no_logits", "input_size": 8}, 2, 64)
    with pytest.raises(EntryError, match=r"output must be class logits \(N, K\), got dict") as err:
        probe_model(spec)
    assert err.value.key == "factory"


def test_package_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "lab" / "ownnets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "zoo.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    entry = {"factory": "ownnets.zoo:build", "kwargs": {"width": 3}, "input_size": 8}
    check_entry(entry)
    assert factory_file(entry["factory"]) == str(package / "zoo.py")
    model, _, classes = load_configured_model(entry, str(package / "zoo.py"), CPU)
    assert len(classes) == 3 and model.conv.out_channels == 3
    with pytest.raises(EntryError, match="cannot be imported") as err:
        check_entry({"factory": "ownnets.missing:build"})
    assert err.value.key == "factory"


# --- weights formats ------------------------------------------------------------------------


def small_net() -> nn.Module:
    """A network of torch's own modules (so a pickle of it can be loaded anywhere)."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: {"state_dict": state},
        lambda state: {"model": state, "epoch": 7},
        lambda state: {f"module.{key}": value for key, value in state.items()},
        lambda state: {"model": {f"module.{key}": value for key, value in state.items()}},
    ],
    ids=["state_dict", "model", "module-prefix", "model-and-prefix"],
)
def test_wrapped_state_dicts_are_read(tmp_path: Path, wrap) -> None:
    state = small_net().state_dict()
    path = tmp_path / "weights.pth.tar"
    torch.save(wrap(state), path)
    read = read_weights(path)
    assert set(read.state_dict) == set(state)
    assert all(torch.equal(read.state_dict[key], state[key]) for key in state)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_pickled_whole_model_needs_trust_pickle(tmp_path: Path, zipped: bool) -> None:
    original = randomised(torchvision.models.mobilenet_v3_small(num_classes=3))
    path = tmp_path / "whole.pt"
    torch.save(original, path, _use_new_zipfile_serialization=zipped)
    entry = {"arch": "mobilenet_v3_small", "weights": str(path)}
    message = (
        r"pickled Python objects .*runs code stored in the file.*models\.mine\.trust_pickle"
        if zipped  # the legacy format cannot be inspected without unpickling: torch's refusal
        else r"(?s)cannot read checkpoint .*Unsupported global.*models\.mine\.trust_pickle: true"
    )
    with pytest.raises(ValueError, match=message):
        load_configured_model(entry, path, CPU, model_name="mine")
    model, spec, classes = load_configured_model({**entry, "trust_pickle": True}, path, CPU)
    assert classes == ["0", "1", "2"] and spec.num_classes == 3
    assert same_outputs(model, original, 64)


def test_corrupt_weights_files_name_the_file(tmp_path: Path) -> None:
    for name in ("broken.safetensors", "broken.pth"):
        path = tmp_path / name
        path.write_bytes(b"not weights")
        with pytest.raises(ValueError, match=f"cannot read checkpoint {path}"):
            read_weights(path)


# --- config-time errors and the factory file as an input (snakemake -n) -----------------------

#: (case id, the `own` model entry, fragments the error output must contain)
BAD_ENTRIES: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "unknown torchvision name",
        {"arch": "mobilenet_v3_smal", "weights": "w.pt"},
        ["models.own.arch", "closest: mobilenet_v3_small"],
    ),
    (
        "unknown timm name",
        {"arch": "timm:vit_tiny_patch16", "weights": "w.pt"},
        ["models.own.arch", "vit_tiny_patch16_224"],
    ),
    ("timm without weights", {"arch": "timm:resnet18"}, ["models.own.weights", "required"]),
    (
        "factory kwargs that do not bind",
        {"factory": "nets.py:build", "kwargs": {"widht": 8}},
        ["models.own.kwargs", "'widht' is no argument (closest: width)"],
    ),
    (
        "factory that returns no module",
        {"factory": "nets.py:not_a_module"},
        ["models.own.factory", "not a torch.nn.Module"],
    ),
    (
        "factory file missing",
        {"factory": "missing.py:build", "kwargs": {"width": 2}},
        ["models.own.factory", "missing.py does not exist"],
    ),
    (
        "layer layout that cannot be interpreted",
        {"factory": "nets.py:volumes", "layers": ["volume"]},
        ["models.own.layers", "layer volume output has shape (1, 4, 1, 16, 16)"],
    ),
    (
        "arch and factory together",
        {"arch": "resnet18", "factory": "nets.py:build", "weights": "w.pt"},
        ["oneOf", "factory"],
    ),
]


@pytest.mark.workflow
@pytest.mark.parametrize(
    "entry, fragments", [c[1:] for c in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES]
)
def test_bad_model_entry_fails_before_any_job(
    tmp_path: Path, entry: dict[str, Any], fragments: list[str]
) -> None:
    from workflow_runs import snakemake, write_config

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "nets.py").write_text(FACTORY)
    own = {"eval_images": "val", "input_size": 16, "layers": ["relu"], **entry}
    config = write_config(tmp_path / "bad.yaml", {"models.own": own, "only_models": ["own"]})
    result = snakemake(workdir, "-n", "--cores", "1", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "jobid:" not in output, output[-2000:]
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output[-3000:]}"
    assert not (workdir / "results").exists()


@pytest.mark.workflow
def test_factory_file_is_an_input_of_every_job_that_builds_the_model(tmp_path: Path) -> None:
    from workflow_runs import JOB, snakemake, write_config

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "nets.py").write_text(FACTORY)
    own = {
        "factory": "nets.py:build",
        "kwargs": {"width": 6},
        "input_size": 16,
        "eval_images": "results/world/val",
        "layers": ["relu"],
    }
    config = write_config(tmp_path / "own.yaml", {"models.own": own, "only_models": ["own"]})
    result = snakemake(workdir, "-n", "--cores", "1", config=config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    inputs: dict[str, list[str]] = {}
    for rule, body in JOB.findall(output):
        line = next((row for row in body.splitlines() if row.startswith("    input: ")), "")
        inputs.setdefault(rule, []).append(line)
    builders = (
        "extract_activations",
        "extract_outputs",
        "ablate_shard",
        "unit_attributes",
        "cumulative_ablation",
    )
    assert set(builders) <= set(inputs), sorted(inputs)
    for rule in builders:
        assert all("nets.py" in line.split("input: ")[1].split(", ") for line in inputs[rule]), (
            rule,
            inputs[rule],
        )
    assert "train_model" not in inputs
    # 6 units in the factory's relu layer: two shards of 4 per basis (unit and rot7).
    assert len(inputs["ablate_shard"]) == 4
