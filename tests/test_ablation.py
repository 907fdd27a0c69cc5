"""The ablation engine agrees with an independent slow path: a full forward per unit with a hook."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from unitablation.ablation import AblationEngine
from unitablation.models import TINY_ARCH, ModelSpec, build_model

TIE_MARGIN = 1e-5


def layer_output(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """The layer's output for `images`, captured by a hook during a plain forward."""
    captured = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(
        lambda _m, _i, out: captured.setdefault("maps", out.clone())
    )
    with torch.no_grad():
        model(images)
    handle.remove()
    return captured["maps"]


def hooked_logits(model, layer, images, unit, value=0.0) -> torch.Tensor:
    """Slow path: the whole network with a hook that sets channel `unit` to `value`."""

    def replace(_module, _inputs, output):
        output = output.clone()
        output[:, unit] = value
        return output

    handle = dict(model.named_modules())[layer].register_forward_hook(replace)
    try:
        with torch.no_grad():
            return model(images)
    finally:
        handle.remove()


def margin(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def compare(model, layer, images, units, method="auto", values=None, units_per_call=5):
    """Predictions of the engine vs the slow path; returns (method used, near-tie count)."""
    model.eval()
    replacement = None if values is None else torch.as_tensor(values, dtype=torch.float32)
    engine = AblationEngine(
        model,
        layer,
        torch.device("cpu"),
        replacement=replacement,
        method=method,
        units_per_call=units_per_call,
    )
    inputs = images if engine.needs_images else layer_output(model, layer, images)
    fast = engine.logits(inputs, units)
    ties = 0
    for row, unit in enumerate(units):
        value = 0.0 if values is None else float(values[unit])
        slow = hooked_logits(model, layer, images, unit, value)
        differs = fast[row].argmax(-1) != slow.argmax(-1)
        near = (margin(fast[row]) < TIE_MARGIN) | (margin(slow) < TIE_MARGIN)
        assert not (differs & ~near).any(), f"unit {unit}: predictions differ beyond float ties"
        ties += int((differs & near).sum())
        torch.testing.assert_close(fast[row], slow, rtol=1e-4, atol=1e-4)
    return engine.method, ties


def test_alexnet_conv5_uses_the_linear_shortcut_and_is_exact() -> None:
    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=10)
    images = torch.randn(3, 3, 96, 96)
    method, ties = compare(model, "features.11", images, list(range(0, 256, 9)))
    assert method == "linear" and ties == 0


def test_vgg16_conv5_3_is_exact() -> None:
    torch.manual_seed(1)
    model = torchvision.models.vgg16(num_classes=10)
    images = torch.randn(2, 3, 64, 64)
    method, ties = compare(model, "features.29", images, list(range(0, 512, 23)))
    assert method == "linear" and ties == 0


@pytest.mark.parametrize("layer,expected", [("layer3", "suffix"), ("layer4", "linear")])
def test_resnet18_layers_are_exact(layer: str, expected: str) -> None:
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=10)
    images = torch.randn(4, 3, 64, 64)
    units = list(range(0, 512 if layer == "layer4" else 256, 11))
    method, ties = compare(model, layer, images, units)
    assert method == expected and ties == 0


def test_resnet_layer4_closed_form_equals_logit_formula() -> None:
    """Linear head: ablated logits = logits - pooled_u * W[:, u], exactly the closed form."""
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=7).eval()
    images = torch.randn(2, 3, 64, 64)
    maps = layer_output(model, "layer4", images)
    engine = AblationEngine(model, "layer4", torch.device("cpu"))
    assert engine.head is not None and engine.head.tail is None
    pooled = maps.mean((2, 3))
    with torch.no_grad():
        logits = model.fc(pooled)
    expected = logits[None] - pooled.T[:, :, None] * model.fc.weight.T[:, None, :]
    torch.testing.assert_close(engine.logits(maps, range(512)), expected, rtol=1e-5, atol=1e-5)


def test_layer_inside_a_residual_block_falls_back_to_the_hook() -> None:
    torch.manual_seed(4)
    model = torchvision.models.resnet18(num_classes=10)
    images = torch.randn(2, 3, 64, 64)
    method, ties = compare(model, "layer3.0.conv1", images, [0, 5, 100, 255])
    assert method == "hook" and ties == 0


@pytest.mark.parametrize(
    "batchnorm,dropout", [(False, 0.0), (True, 0.0), (False, 0.5), (True, 0.5)]
)
@pytest.mark.parametrize("layer", ["features.relu3", "features.relu5", "classifier.relu6"])
def test_tinyalex_variants_every_method(batchnorm: bool, dropout: float, layer: str) -> None:
    torch.manual_seed(5)
    model = build_model(
        ModelSpec(
            TINY_ARCH,
            6,
            batchnorm=batchnorm,
            dropout=dropout,
            widths=(8, 8, 12, 12, 10),
            hidden=16,
            image_size=32,
        )
    ).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.randn(8, 3, 32, 32)
    units = list(range(0, 10))
    methods = set()
    for method in ("auto", "suffix", "hook"):
        used, ties = compare(model, layer, images, units, method=method, units_per_call=3)
        methods.add(used)
        assert ties == 0
    assert {"suffix", "hook"} <= methods


def test_mean_mode_matches_a_hook_setting_the_mean() -> None:
    torch.manual_seed(6)
    model = build_model(
        ModelSpec(TINY_ARCH, 5, batchnorm=True, widths=(6, 6, 8, 8, 8), hidden=12, image_size=32)
    ).eval()
    images = torch.randn(6, 3, 32, 32)
    for layer in ("features.relu4", "features.relu5"):
        means = layer_output(model, layer, images).mean((0, 2, 3))
        for method in ("auto", "suffix"):
            compare(model, layer, images, list(range(8)), method=method, values=means)


def test_run_counts_per_class_and_streams_batches() -> None:
    """Counts from several streamed batches equal counts computed from the slow path."""
    torch.manual_seed(7)
    model = build_model(
        ModelSpec(TINY_ARCH, 4, widths=(6, 6, 8, 8, 8), hidden=12, image_size=32)
    ).eval()
    images, labels = torch.randn(10, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0])
    maps = layer_output(model, "features.relu5", images)
    engine = AblationEngine(model, "features.relu5", torch.device("cpu"), units_per_call=3)
    batches = [(maps[:4], labels[:4]), (maps[4:7], labels[4:7]), (maps[7:], labels[7:])]
    counts = engine.run(batches, [1, 4, 6, 7], num_classes=4)
    assert counts.class_sizes.tolist() == [4, 2, 2, 2]
    for row, unit in enumerate([1, 4, 6, 7]):
        slow = hooked_logits(model, "features.relu5", images, unit)
        hits = (slow.argmax(1) == labels).double()
        expected = torch.bincount(labels, weights=hits, minlength=4)
        assert counts.correct[row].tolist() == expected.long().tolist()
        probability = torch.softmax(slow.double(), 1)[torch.arange(10), labels]
        expected_prob = torch.bincount(labels, weights=probability, minlength=4)
        torch.testing.assert_close(
            torch.from_numpy(counts.prob_sum[row]), expected_prob, rtol=1e-5, atol=1e-6
        )
    with torch.no_grad():
        full = model(images)
    assert (
        counts.baseline_correct.tolist()
        == torch.bincount(labels, weights=(full.argmax(1) == labels).double(), minlength=4)
        .long()
        .tolist()
    )


def test_grouping_does_not_change_results() -> None:
    """The same unit gives bit-identical logits whatever shard or group it is evaluated in."""
    torch.manual_seed(8)
    model = build_model(
        ModelSpec(TINY_ARCH, 4, widths=(6, 6, 8, 8, 8), hidden=12, image_size=32)
    ).eval()
    maps = layer_output(model, "features.relu3", torch.randn(5, 3, 32, 32))
    for method in ("linear", "suffix"):
        engine = AblationEngine(
            model, "features.relu3", torch.device("cpu"), method=method, units_per_call=4
        )
        whole = engine.logits(maps, range(8))
        parts = torch.cat([engine.logits(maps, [0, 1, 2]), engine.logits(maps, range(3, 8))])
        assert torch.equal(whole, parts)


def test_unknown_method_and_bad_replacement() -> None:
    model = build_model(ModelSpec(TINY_ARCH, 4, widths=(6, 6, 8, 8, 8), hidden=12, image_size=32))
    with pytest.raises(ValueError, match="unknown ablation method 'fast'"):
        AblationEngine(model, "features.relu5", torch.device("cpu"), method="fast")
    engine = AblationEngine(
        model, "features.relu5", torch.device("cpu"), replacement=torch.zeros(3)
    )
    with pytest.raises(ValueError, match="layer has 8 channels"):
        engine.logits(torch.zeros(2, 8, 4, 4), [0])
