"""The linear shortcut's ablated logits equal a full forward with a replacing hook, per head kind.

Small random models whose layer 1 (a ReLU) feeds channel-wise ops and then a Linear op after
flattening, a Conv2d op, or a closed-form linear head (average pool + fc, no tail); zero and
mean replacement, single units (consecutive ones take a slice, others a gather) and sets.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unitablation.ablation import AblationEngine

CPU = torch.device("cpu")
CHANNELS = 6


def linear_head() -> nn.Module:
    """Conv -> ReLU (the layer) -> batch norm, max pool, flatten -> Linear -> ReLU -> Linear."""
    norm = nn.BatchNorm2d(CHANNELS)
    norm.running_mean.uniform_(-0.3, 0.3)
    norm.running_var.uniform_(0.5, 2.0)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-0.5, 0.5)
    return nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3, padding=1),
        nn.ReLU(inplace=True),
        norm,
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(CHANNELS * 16, 10),
        nn.ReLU(inplace=True),
        nn.Linear(10, 5),
    )


def conv_head() -> nn.Module:
    """Conv -> ReLU (the layer) -> max pool -> Conv (padded, strided) -> ReLU, pool, fc."""
    return nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(CHANNELS, 7, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(7, 5),
    )


def closed_form_head() -> nn.Module:
    """Conv -> ReLU (the layer) -> average pool, flatten -> fc: ablated logits in closed form."""
    return nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(CHANNELS, 5),
    )


def replaced_logits(
    model: nn.Module, images: torch.Tensor, units: list[int], values: torch.Tensor
) -> torch.Tensor:
    """Slow path: the whole network with a hook setting channels `units` of layer 1 to `values`."""

    def replace(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for unit in units:
            output[:, unit] = values[unit]
        return output

    handle = model[1].register_forward_hook(replace)
    try:
        with torch.no_grad():
            return model(images)
    finally:
        handle.remove()


def layer_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Layer 1's output (a copy: the ReLU may be in place)."""
    with torch.no_grad():
        return model[1](model[0](images)).clone()


@pytest.mark.parametrize(
    "build,linear_type,has_tail",
    [
        (linear_head, nn.Linear, True),
        (conv_head, nn.Conv2d, True),
        (closed_form_head, nn.Linear, False),
    ],
)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_linear_shortcut_equals_a_replacing_hook(build, linear_type, has_tail, mode: str) -> None:
    torch.manual_seed(11)
    model = build().eval()
    images = torch.randn(7, 3, 8, 8)
    maps = layer_maps(model, images)
    values = torch.zeros(CHANNELS) if mode == "zero" else maps.mean((0, 2, 3)) + 0.1
    engine = AblationEngine(
        model, "1", CPU, replacement=None if mode == "zero" else values, units_per_call=4
    )
    assert engine.method == "linear"
    assert isinstance(engine.head.linear, linear_type)
    assert (engine.head.tail is not None) == has_tail
    original = maps.clone()
    singles = [1, 2, 3, 4, 0, 5, 2]  # one consecutive group, one gathered and padded
    fast = engine.logits(maps, singles)
    for row, unit in enumerate(singles):
        slow = replaced_logits(model, images, [unit], values)
        torch.testing.assert_close(fast[row], slow, rtol=1e-5, atol=1e-5)
    sets = [[0], [1, 4], [], [0, 2, 3, 5], list(range(CHANNELS))]
    fast_sets = engine.set_logits(maps, sets)
    for row, units in enumerate(sets):
        slow = replaced_logits(model, images, units, values)
        torch.testing.assert_close(fast_sets[row], slow, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        full = model(images)
    torch.testing.assert_close(engine.baseline_logits(maps), full, rtol=1e-5, atol=1e-5)
    assert torch.equal(maps, original), "the shortcut wrote into the stored maps"


def test_linear_shortcut_run_counts_equal_the_slow_path() -> None:
    """`run` and `run_sets` counts from the shortcut equal counts from replacing hooks."""
    torch.manual_seed(12)
    model = linear_head().eval()
    images = torch.randn(9, 3, 8, 8)
    labels = torch.arange(9) % 5
    maps = layer_maps(model, images)
    engine = AblationEngine(model, "1", CPU, units_per_call=4, memory_budget_bytes=20_000)
    zeros = torch.zeros(CHANNELS)
    counts = engine.run([(maps[:5], labels[:5]), (maps[5:], labels[5:])], range(CHANNELS), 5)
    set_counts = engine.run_sets([(maps, labels)], [[0, 1], [2], [3, 4, 5]], 5)
    for row in range(CHANNELS):
        slow = replaced_logits(model, images, [row], zeros)
        hits = (slow.argmax(1) == labels).double()
        assert counts.correct[row].tolist() == torch.bincount(labels, hits, 5).long().tolist()
        probability = torch.softmax(slow.double(), 1)[torch.arange(9), labels]
        torch.testing.assert_close(
            torch.from_numpy(counts.prob_sum[row]),
            torch.bincount(labels, probability, 5),
            rtol=1e-5,
            atol=1e-6,
        )
    for row, units in enumerate([[0, 1], [2], [3, 4, 5]]):
        hits = (replaced_logits(model, images, units, zeros).argmax(1) == labels).double()
        assert set_counts.correct[row].tolist() == torch.bincount(labels, hits, 5).long().tolist()


def test_linear_shortcut_refuses_units_out_of_range() -> None:
    model = closed_form_head().eval()
    maps = layer_maps(model, torch.randn(2, 3, 8, 8))
    engine = AblationEngine(model, "1", CPU, units_per_call=2)
    with pytest.raises(ValueError, match=f"out of range: layer has {CHANNELS} units"):
        engine.logits(maps, [CHANNELS - 1, CHANNELS])
    with pytest.raises(ValueError, match=f"out of range: layer has {CHANNELS} units"):
        engine.logits(maps, [0, CHANNELS + 3])
