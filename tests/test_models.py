"""The miniature model family, layer names, checkpoints and the training loop."""

from __future__ import annotations

import pytest
import torch

from unitablation.models import (
    TINY_ARCH,
    ModelSpec,
    build_model,
    check_layers,
    enclosing_block,
    layer_names,
    load_model,
    module_calls,
    read_checkpoint,
    save_checkpoint,
)
from unitablation.training import TrainConfig, learning_rate, train_model

VARIANTS = {
    "plain": (False, 0.0),
    "batchnorm": (True, 0.0),
    "dropout": (False, 0.5),
    "batchnorm_dropout": (True, 0.5),
}


def tiny_spec(batchnorm: bool = False, dropout: float = 0.0) -> ModelSpec:
    return ModelSpec(
        TINY_ARCH,
        num_classes=5,
        batchnorm=batchnorm,
        dropout=dropout,
        widths=(4, 6, 8, 8, 8),
        hidden=16,
        image_size=32,
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_builds_and_trains_a_step(variant: str) -> None:
    batchnorm, dropout = VARIANTS[variant]
    torch.manual_seed(0)
    model = build_model(tiny_spec(batchnorm, dropout))
    has_bn = any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    has_dropout = any(isinstance(module, torch.nn.Dropout) for module in model.modules())
    assert has_bn == batchnorm and has_dropout == (dropout > 0)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    before = {key: value.clone() for key, value in model.state_dict().items()}
    history = train_model(
        model, images, labels, TrainConfig(epochs=1, batch_size=8), torch.device("cpu")
    )
    assert len(history) == 1 and history[0]["train_loss"] > 0
    changed = [
        key for key, value in model.state_dict().items() if not torch.equal(value, before[key])
    ]
    assert "features.conv1.weight" in changed and "classifier.fc7.weight" in changed
    assert model(images).shape == (8, 5)


def test_variants_share_layer_paths_and_head_is_nonlinear() -> None:
    names = [set(layer_names(build_model(tiny_spec(*VARIANTS[v])))) for v in VARIANTS]
    assert all(names[0] == other for other in names[1:])
    model = build_model(tiny_spec())
    head = [name for name, _ in model.classifier.named_children()]
    assert head.index("fc6") < head.index("relu6") < head.index("fc7")


def test_training_is_deterministic() -> None:
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 5
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_model(tiny_spec(True, 0.5))
        train_model(
            model, images, labels, TrainConfig(epochs=2, batch_size=4, seed=3), torch.device("cpu")
        )
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    config = TrainConfig(lr=0.1, warmup_epochs=1)
    rates = [learning_rate(config, step, 100, 10) for step in range(100)]
    assert rates[0] == pytest.approx(0.01) and rates[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[-1] < 1e-3


def test_wrong_layer_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"no layer\(s\) \['features.relu9'\].*features.relu5"):
        check_layers(tiny_spec(), ["features.relu9"], "plain")
    check_layers(tiny_spec(), ["features.relu5", "classifier.fc6"], "plain")


@pytest.mark.parametrize(
    "arch,layer", [("alexnet", "features.11"), ("resnet18", "layer4"), ("vgg16", "features.29")]
)
def test_torchvision_layers_are_checked_without_allocating(arch: str, layer: str) -> None:
    spec = ModelSpec(arch, num_classes=1000)
    check_layers(spec, [layer], arch)
    with pytest.raises(ValueError, match="valid module paths"):
        check_layers(spec, ["features.99"], arch)


def test_a_module_called_twice_is_refused_with_its_enclosing_block() -> None:
    """ResNet-18 reuses each block's `relu` twice: no single output, the block is suggested."""
    spec = ModelSpec("resnet18", num_classes=10)
    message = r"model 'r' \(resnet18\): layer layer4.1.relu is called 2 times.*instead: layer4.1$"
    with pytest.raises(ValueError, match=message):
        check_layers(spec, ["layer4", "layer4.1.relu"], "r")
    check_layers(spec, ["layer4", "layer4.1", "layer4.1.conv1", "layer3.0.bn2"], "r")
    calls = module_calls(build_model_on_meta(spec), 64)
    assert calls["layer4.1.relu"] == 2 and calls["layer4.1"] == 1 and calls["fc"] == 1
    assert enclosing_block("layer4.1.relu", calls) == "layer4.1"
    assert enclosing_block("a.b.c", {"a": 1, "a.b": 3}) == "a"


def build_model_on_meta(spec: ModelSpec) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(spec)


def test_unknown_arch_is_named_with_the_closest_builders() -> None:
    with pytest.raises(ValueError, match="unknown torchvision architecture 'lenet'"):
        build_model(ModelSpec("lenet", 10))
    with pytest.raises(ValueError, match=r"'resnet81'; closest: resnet18"):
        build_model(ModelSpec("resnet81", 10))


def test_checkpoint_round_trip_and_shape_mismatch(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, ["a", "b", "c", "d", "e"])
    checkpoint = read_checkpoint(path)
    assert checkpoint.classes == ["a", "b", "c", "d", "e"] and checkpoint.num_classes() == 5
    loaded = load_model(tiny_spec(), checkpoint, torch.device("cpu"), path)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), model.eval()(images))
    wrong = ModelSpec(TINY_ARCH, 5, widths=(4, 6, 8, 8, 9), hidden=16, image_size=32)
    with pytest.raises(ValueError, match=f"checkpoint {path} does not fit tinyalex"):
        load_model(wrong, checkpoint, torch.device("cpu"), path)


def test_plain_state_dict_and_corrupt_file(tmp_path) -> None:
    model = build_model(ModelSpec("resnet18", num_classes=7))
    plain = tmp_path / "plain.pth"
    torch.save({f"module.{key}": value for key, value in model.state_dict().items()}, plain)
    checkpoint = read_checkpoint(plain)
    assert checkpoint.classes is None and checkpoint.num_classes() == 7
    load_model(ModelSpec("resnet18", 7), checkpoint, torch.device("cpu"), plain)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read checkpoint {corrupt}"):
        read_checkpoint(corrupt)
