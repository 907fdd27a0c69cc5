"""The ablation engine agrees with an independent slow path: a full forward per unit with a hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from unitablation.ablation import AblationEngine
from unitablation.models import TINY_ARCH, ModelSpec, build_model
from unitablation.replacement import single_groups

TIE_MARGIN = 1e-5


def layer_output(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """The layer's output for `images`, captured by a hook during a plain forward."""
    captured = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("maps", out.clone())
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


def counts_by_hand(model, layer, images, labels, units, edit_for, num_classes):
    """Slow path for `run`: correct and lost (correct -> wrong) per unit and class."""
    with torch.no_grad():
        baseline = model(images).argmax(1) == labels
    correct, lost = [], []
    for unit in units:
        handle = dict(model.named_modules())[layer].register_forward_hook(edit_for(unit))
        try:
            with torch.no_grad():
                hit = model(images).argmax(1) == labels
        finally:
            handle.remove()
        correct.append(torch.bincount(labels, weights=hit.double(), minlength=num_classes))
        lost.append(
            torch.bincount(labels, weights=(baseline & ~hit).double(), minlength=num_classes)
        )
    return torch.stack(correct).long().numpy(), torch.stack(lost).long().numpy()


def test_run_counts_gross_losses_and_baseline_predictions() -> None:
    """`lost` counts images turned from correct to wrong (not the net change), per class."""
    torch.manual_seed(9)
    model = build_model(
        ModelSpec(TINY_ARCH, 3, widths=(6, 6, 8, 8, 8), hidden=12, image_size=32)
    ).eval()
    for module in model.modules():  # larger head weights: single units then flip predictions
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.5)
    images = torch.randn(24, 3, 32, 32)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = torch.where(torch.arange(24) % 2 == 0, predicted, (predicted + 1) % 3)
    maps = layer_output(model, "features.relu5", images)
    units = list(range(8))

    def zero(unit):
        return lambda _m, _i, out: out.index_fill(1, torch.tensor([unit]), 0.0)

    correct, lost = counts_by_hand(model, "features.relu5", images, labels, units, zero, 3)
    for method in ("linear", "suffix"):
        engine = AblationEngine(
            model, "features.relu5", torch.device("cpu"), method=method, units_per_call=3
        )
        counts = engine.run([(maps[:10], labels[:10]), (maps[10:], labels[10:])], units, 3)
        assert counts.correct.tolist() == correct.tolist()
        assert counts.lost.tolist() == lost.tolist()
        assert counts.baseline_predictions.tolist() == predicted.tolist()
    assert lost.sum() > 0 and (lost.sum(1) > counts.baseline_correct.sum() - correct.sum(1)).any()


def test_inplace_relu_after_a_preactivation_layer_leaves_the_maps_alone() -> None:
    """AlexNet features.10 (conv5, before its ReLU(inplace=True)): the baseline pass must not
    rectify the stored maps that the ablations read; unit, mean and rotated bases stay exact."""
    from unitablation.rotation import haar_rotation

    torch.manual_seed(10)
    model = torchvision.models.alexnet(num_classes=4).eval()
    images = torch.randn(3, 3, 64, 64)
    maps = layer_output(model, "features.10", images)
    assert (maps < 0).any()
    original = maps.clone()
    units = [0, 3, 77, 255]
    means = maps.mean((0, 2, 3))
    rotation = torch.from_numpy(haar_rotation(256, 3)).float()
    cases = [("zero", None, None), ("mean", means, None), ("rotated", None, rotation)]
    for name, values, rotation_used in cases:
        engine = AblationEngine(
            model,
            "features.10",
            torch.device("cpu"),
            replacement=values,
            units_per_call=3,
            rotation=rotation_used,
        )
        baseline = engine.baseline_logits(maps)  # first, as `run` does
        fast = engine.logits(maps, units)
        torch.testing.assert_close(maps, original, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(baseline, model(images), rtol=1e-4, atol=1e-4)
        for row, unit in enumerate(units):
            if rotation_used is None:
                value = 0.0 if values is None else float(values[unit])
                slow = hooked_logits(model, "features.10", images, unit, value)
            else:
                direction = rotation[unit]

                def remove(_m, _i, out, direction=direction):
                    coordinate = torch.einsum("c,bchw->bhw", direction, out)
                    return out - direction.view(1, -1, 1, 1) * coordinate.unsqueeze(1)

                handle = model.features[10].register_forward_hook(remove)
                with torch.no_grad():
                    slow = model(images)
                handle.remove()
            torch.testing.assert_close(fast[row], slow, rtol=1e-4, atol=1e-4, msg=name)


def test_alexnet_conv5_run_matches_the_slow_path_after_its_baseline() -> None:
    """features.11 takes the linear shortcut into classifier.1, whose tail starts with
    ReLU(inplace=True): the baseline pass must not rectify the shared fc6 output."""
    torch.manual_seed(11)
    model = torchvision.models.alexnet(num_classes=4).eval()
    images = torch.randn(3, 3, 64, 64)
    maps = layer_output(model, "features.11", images)
    engine = AblationEngine(model, "features.11", torch.device("cpu"), units_per_call=4)
    assert engine.method == "linear" and engine.head.tail is not None
    engine.baseline_logits(maps)
    evaluate = engine._evaluator(maps)
    evaluate(None)  # the baseline of a chunk, then its units, as `run` evaluates them
    fast = evaluate(single_groups(np.array([1, 50, 200, 255]), 4)[0])
    for row, unit in enumerate([1, 50, 200, 255]):
        slow = hooked_logits(model, "features.11", images, unit)
        torch.testing.assert_close(fast[row], slow, rtol=1e-4, atol=1e-4)


class _BatchStatsHead(nn.Module):
    """conv -> ReLU (the layer) -> batch norm without running statistics -> fc."""

    def __init__(self, track: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.norm = nn.BatchNorm2d(4, track_running_stats=track)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.norm(self.relu(self.conv(images))), 1))


class _FunctionalDropoutHead(nn.Module):
    """conv -> ReLU (the layer) -> F.dropout (training as given) -> fc."""

    def __init__(self, training: bool | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 3)
        self.training_flag = training

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.relu(self.conv(images)), 1)
        if self.training_flag is None:
            features = nn.functional.dropout(features, 0.5)
        else:
            features = nn.functional.dropout(features, 0.5, training=self.training_flag)
        return self.fc(features)


@pytest.mark.parametrize(
    "model, reason",
    [
        (_BatchStatsHead(track=False), "track_running_stats=False"),
        (_FunctionalDropoutHead(training=None), "without training=False"),
        (_FunctionalDropoutHead(training=True), "without training=False"),
    ],
    ids=["batch-statistics batch norm", "dropout default", "dropout training=True"],
)
def test_linear_shortcut_refuses_what_it_cannot_do_exactly(model: nn.Module, reason: str) -> None:
    auto = AblationEngine(model, "relu", torch.device("cpu"))
    assert auto.method == "suffix"
    with pytest.raises(ValueError, match=f"layer relu: no linear shortcut.*{reason}"):
        AblationEngine(model, "relu", torch.device("cpu"), method="linear")


@pytest.mark.parametrize(
    "model", [_BatchStatsHead(track=True), _FunctionalDropoutHead(training=False)]
)
def test_linear_shortcut_takes_running_statistics_and_disabled_dropout(model: nn.Module) -> None:
    """The counterparts of the refused heads are exact and do take the shortcut."""
    torch.manual_seed(12)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    method, ties = compare(model, "relu", torch.randn(4, 3, 8, 8), [0, 1, 2, 3])
    assert method == "linear" and ties == 0


def test_hook_route_refuses_a_module_called_twice() -> None:
    """ResNet-18 `layer4.1.relu` runs twice per block: fx cannot cut it and the hook refuses."""
    torch.manual_seed(13)
    model = torchvision.models.resnet18(num_classes=3).eval()
    engine = AblationEngine(model, "layer4.1.relu", torch.device("cpu"))
    assert engine.method == "hook"
    with pytest.raises(ValueError, match="layer4.1.relu is called more than once"):
        engine.run([(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))], [0], 3)


def test_baseline_comparison_allows_only_float_ties() -> None:
    from unitablation.counts import check_baseline, compare_baseline

    stored = np.array([[1.0, 0.0, 0.0], [0.5, 0.5 + 4e-6, 0.0], [0.0, 2.0, 1.0], [3.0, 1.0, 0.0]])
    same = compare_baseline(np.array([0, 1, 1, 0]), stored, 1e-5)
    assert (same.differing, same.beyond_ties) == (0, 0)
    tie = compare_baseline(np.array([0, 0, 1, 0]), stored, 1e-5)  # image 1 is a near tie
    assert (tie.differing, tie.beyond_ties) == (1, 0)
    check_baseline(tie, "m", "features.relu5", "float32 maps")
    wrong = compare_baseline(np.array([0, 0, 2, 1]), stored, 1e-5)
    assert (wrong.differing, wrong.beyond_ties) == (3, 2)
    with pytest.raises(ValueError, match=r"model 'm', layer features.relu5: .* 2 eval image"):
        check_baseline(wrong, "m", "features.relu5", "float32 maps")
    with pytest.raises(ValueError, match="baseline has 2 predictions, the store 4 logits"):
        compare_baseline(np.array([0, 1]), stored, 1e-5)
