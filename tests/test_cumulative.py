"""Cumulative ablation: set ablation agrees with an independent full forward with a hook, the
ranking split is stratified and seeded, and the table is computed on the right images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

from unitablation.ablation import AblationEngine
from unitablation.cumulative import (
    TABLE_COLUMNS,
    class_rankings,
    cumulative_ablation,
    powers_of_two,
    ranking_split,
    split_batches,
)
from unitablation.models import TINY_ARCH, ModelSpec, build_model
from unitablation.rotation import haar_rotation, rotate

TIE_MARGIN = 1e-5
CPU = torch.device("cpu")


def layer_output(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """The layer's output for `images`, captured by a hook during a plain forward."""
    captured = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured["maps"] = output.clone()  # returns None: the forward goes on with `output`

    handle = dict(model.named_modules())[layer].register_forward_hook(keep)
    with torch.no_grad():
        model(images)
    handle.remove()
    return captured["maps"]


def hooked_set_logits(model, layer, images, units, values=None, rotation=None) -> torch.Tensor:
    """Slow path: the whole network with a hook ablating every unit (or direction) of `units`."""
    units = sorted(set(units))  # a set: a unit listed twice is still ablated once

    def replace(_module, _inputs, output):
        output = output.clone()
        if not units:
            return output
        spatial = [1] * (output.dim() - 2)
        if rotation is None:
            for unit in units:
                output[:, unit] = 0.0 if values is None else float(values[unit])
            return output
        directions = rotation[units]  # R_J, (J, C)
        coordinates = torch.einsum("jc,bc...->bj...", directions, output)
        if values is not None:
            coordinates = coordinates - values[units].view(1, -1, *spatial)
        return output - torch.einsum("jc,bj...->bc...", directions, coordinates)

    handle = dict(model.named_modules())[layer].register_forward_hook(replace)
    try:
        with torch.no_grad():
            return model(images)
    finally:
        handle.remove()


def margin(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def compare_sets(model, layer, images, sets, method="auto", values=None, rotation=None):
    """Set logits of the engine vs the slow path for every (set, image); returns the method."""
    model.eval()
    evaluator = AblationEngine(
        model,
        layer,
        CPU,
        replacement=values,
        rotation=rotation,
        method=method,
        units_per_call=3,
    )
    inputs = images if evaluator.needs_images else layer_output(model, layer, images)
    fast = evaluator.set_logits(inputs, sets)
    assert fast.shape[:2] == (len(sets), len(images))
    for row, units in enumerate(sets):
        slow = hooked_set_logits(model, layer, images, units, values, rotation)
        differs = fast[row].argmax(-1) != slow.argmax(-1)
        near = (margin(fast[row]) < TIE_MARGIN) | (margin(slow) < TIE_MARGIN)
        assert not (differs & ~near).any(), f"set {units}: predictions differ beyond float ties"
        assert not differs.any(), f"set {units}: near tie changed a prediction"
        torch.testing.assert_close(fast[row], slow, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        evaluator.baseline_logits(inputs), model(images).detach(), rtol=1e-4, atol=1e-4
    )
    return evaluator.method


def tiny_model(seed: int, batchnorm: bool = False, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(
        ModelSpec(
            TINY_ARCH,
            classes,
            batchnorm=batchnorm,
            widths=(6, 6, 8, 8, 8),
            hidden=12,
            image_size=32,
        )
    ).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
        if isinstance(module, nn.Linear):  # larger than the default init, so sets matter
            nn.init.normal_(module.weight, 0.0, 0.5)
            nn.init.normal_(module.bias, 0.0, 0.1)
    return model


TINY_SETS = [[3], [0, 5], [1, 2, 7], [4, 4, 6], list(range(8)), []]


@pytest.mark.parametrize("layer", ["features.relu3", "features.relu5"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_tinyalex_sets_every_method(layer: str, batchnorm: bool) -> None:
    model = tiny_model(0, batchnorm)
    images = torch.randn(6, 3, 32, 32)
    used = {m: compare_sets(model, layer, images, TINY_SETS, m) for m in ("auto", "suffix", "hook")}
    assert used == {"auto": "linear", "suffix": "suffix", "hook": "hook"}


@pytest.mark.parametrize("layer,expected", [("layer3", "suffix"), ("layer4", "linear")])
def test_resnet18_sets_are_exact(layer: str, expected: str) -> None:
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(4, 3, 64, 64)
    channels = 512 if layer == "layer4" else 256
    sets = [[0], [5, 17, 200], list(range(0, channels, 3)), list(range(channels))]
    assert compare_sets(model, layer, images, sets) == expected
    if expected == "linear":
        assert compare_sets(model, layer, images, sets, "suffix") == "suffix"


def test_layer_inside_a_residual_block_falls_back_to_the_hook() -> None:
    torch.manual_seed(4)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    sets = [[0, 5], list(range(0, 256, 2))]
    assert compare_sets(model, "layer3.0.conv1", images, sets) == "hook"
    assert AblationEngine(model, "layer3.0.conv1", CPU).needs_images


@pytest.mark.parametrize("rotated", [False, True])
def test_mean_mode_sets(rotated: bool) -> None:
    model = tiny_model(6, batchnorm=True)
    images = torch.randn(6, 3, 32, 32)
    rotation = torch.from_numpy(haar_rotation(8, 11)).float() if rotated else None
    for layer in ("features.relu3", "features.relu5"):
        maps = layer_output(model, layer, images)
        coordinates = maps if rotation is None else rotate(maps, rotation)
        values = coordinates.mean((0, 2, 3))
        for method in ("auto", "suffix", "hook"):
            compare_sets(model, layer, images, TINY_SETS, method, values, rotation)


def test_rotated_sets_remove_the_directions() -> None:
    model = tiny_model(1, batchnorm=True)
    images = torch.randn(6, 3, 32, 32)
    rotation = torch.from_numpy(haar_rotation(8, 3)).float()
    for layer in ("features.relu3", "features.relu5"):
        assert compare_sets(model, layer, images, TINY_SETS, "auto", rotation=rotation) == "suffix"
        compare_sets(model, layer, images, TINY_SETS, "hook", rotation=rotation)
    with pytest.raises(ValueError, match="no linear shortcut"):
        AblationEngine(model, "features.relu5", CPU, rotation=rotation, method="linear")
    # Removing every direction of a rotation leaves nothing: the all-zero layer output.
    maps = layer_output(model, "features.relu5", images)
    evaluator = AblationEngine(model, "features.relu5", CPU, rotation=rotation)
    zero = hooked_set_logits(model, "features.relu5", images, range(8))
    torch.testing.assert_close(
        evaluator.set_logits(maps, [range(8)])[0], zero, atol=1e-5, rtol=1e-5
    )


def test_rotated_sets_resnet_layer4() -> None:
    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=6).eval()
    images = torch.randn(2, 3, 64, 64)
    rotation = torch.from_numpy(haar_rotation(512, 2)).float()
    sets = [[0], [100, 511], list(range(0, 512, 5))]
    assert compare_sets(model, "layer4", images, sets, rotation=rotation) == "suffix"


def test_run_counts_per_class_and_streams_batches() -> None:
    """Counts over streamed batches, with padded groups and a small memory budget, equal the
    slow path's."""
    model = tiny_model(7, classes=4)
    images = torch.randn(10, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0])
    with torch.no_grad():
        labels[:5] = model(images[:5]).argmax(1)  # some correct predictions
    maps = layer_output(model, "features.relu5", images)
    sets = [[1], [4, 6], [0, 2, 3, 5, 7], [7], list(range(8)), [2, 5], [6]]
    for method in ("linear", "suffix"):
        evaluator = AblationEngine(
            model, "features.relu5", CPU, method=method, units_per_call=3, memory_budget_bytes=4000
        )
        batches = [(maps[:4], labels[:4]), (maps[4:7], labels[4:7]), (maps[7:], labels[7:])]
        counts = evaluator.run_sets(batches, sets, num_classes=4)
        assert counts.class_sizes.tolist() == torch.bincount(labels, minlength=4).tolist()
        for row, units in enumerate(sets):
            slow = hooked_set_logits(model, "features.relu5", images, units)
            hits = (slow.argmax(1) == labels).double()
            expected = torch.bincount(labels, weights=hits, minlength=4).long()
            assert counts.correct[row].tolist() == expected.tolist()
        with torch.no_grad():
            full = (model(images).argmax(1) == labels).double()
        expected = torch.bincount(labels, weights=full, minlength=4).long()
        assert counts.baseline_correct.tolist() == expected.tolist()
        assert counts.near_ties.shape == (len(sets),) and counts.method == method
    with pytest.raises(ValueError, match="out of range"):
        evaluator.set_logits(maps, [[8]])


def test_ranking_split_is_stratified_and_seeded() -> None:
    sizes = {0: 10, 1: 7, 2: 1, 3: 4, 4: 5}
    labels = np.repeat(list(sizes), list(sizes.values()))
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    mask = ranking_split(labels, 0.3, seed=4)
    assert mask.dtype == bool and mask.shape == labels.shape
    expected = {0: 3, 1: 2, 2: 0, 3: 1, 4: 2}  # round half up of 0.3 n_c (1.5 -> 2)
    assert {c: int(mask[labels == c].sum()) for c in sizes} == expected
    assert np.array_equal(mask, ranking_split(labels, 0.3, seed=4))
    assert not np.array_equal(ranking_split(labels, 0.5, 4), ranking_split(labels, 0.5, 5))
    # One class's split depends on its own labels and the seed only.
    relabelled = np.where(labels == 1, 3, labels)
    other = ranking_split(relabelled, 0.3, seed=4)
    assert np.array_equal(other[labels == 0], mask[labels == 0])
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            ranking_split(labels, fraction, 0)
    with pytest.raises(ValueError, match="label < 0"):
        ranking_split(np.array([0, -1]), 0.5, 0)


def test_powers_of_two() -> None:
    assert powers_of_two(8) == [1, 2, 4, 8]
    assert powers_of_two(10) == [1, 2, 4, 8]
    assert powers_of_two(10, max_k=5) == [1, 2, 4]
    assert powers_of_two(1) == [1]
    with pytest.raises(ValueError):
        powers_of_two(0)
    with pytest.raises(ValueError):
        powers_of_two(4, max_k=0)


def test_class_rankings_tie_breaks() -> None:
    drops = np.array(
        [
            [5.0, np.nan, 0.0],
            [10.0, np.nan, -2.0],
            [10.0, np.nan, 0.0],
            [5.0, np.nan, 0.0],
        ]
    )
    prob = np.array(
        [
            [0.1, np.nan, 0.0],
            [0.2, np.nan, 0.5],
            [0.3, np.nan, 0.0],
            [0.1, np.nan, 0.2],
        ]
    )
    rankings = class_rankings(drops, prob)
    assert rankings.shape == (3, 4)
    assert rankings[0].tolist() == [2, 1, 0, 3]  # drop, then probability drop, then index
    assert rankings[1].tolist() == [0, 1, 2, 3]  # class without images: index order
    assert rankings[2].tolist() == [3, 0, 2, 1]  # negative drops rank last
    with pytest.raises(ValueError):
        class_rankings(drops, prob[:, :2])


def test_split_batches_filters_a_stream_and_checks_its_order() -> None:
    labels = np.array([0, 1, 0, 1, 2, 2, 0])
    mask = np.array([True, False, False, True, True, False, False])
    inputs = torch.arange(7.0)[:, None]
    batches = [
        (inputs[:3], torch.from_numpy(labels[:3])),
        (inputs[3:], torch.from_numpy(labels[3:])),
    ]
    kept = list(split_batches(batches, mask, True, labels))
    assert torch.cat([x for x, _ in kept]).flatten().tolist() == [0.0, 3.0, 4.0]
    rest = list(split_batches(batches, mask, False, labels))
    assert torch.cat([y for _, y in rest]).tolist() == [1, 0, 2, 0]
    with pytest.raises(ValueError, match="other labels"):
        list(split_batches(batches, mask, True, labels[::-1].copy()))
    with pytest.raises(ValueError, match="split mask 8"):
        list(split_batches(batches, np.append(mask, True), True))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tinyalex trained a few steps on noisy class templates, and labelled eval images."""
    torch.manual_seed(0)
    classes = 4
    templates = torch.randn(classes, 3, 32, 32)

    def data(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % classes
        return templates[labels] + 3.0 * torch.randn(count, 3, 32, 32), labels

    model = build_model(
        ModelSpec(TINY_ARCH, classes, widths=(6, 6, 8, 8, 8), hidden=12, image_size=32)
    )
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):
        images, labels = data(32)
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()
    model.eval()
    images, labels = data(48)
    return model, images, labels


def stream(model, layer, images, labels, batch_size=10):
    """The batches factory of cumulative_ablation: layer maps, or images for the hook path."""

    def batches(needs_images: bool):
        for start in range(0, len(images), batch_size):
            part = images[start : start + batch_size]
            inputs = part if needs_images else layer_output(model, layer, part)
            yield inputs, labels[start : start + batch_size]

    return batches


def accuracies(logits: torch.Tensor, labels: torch.Tensor, c: int) -> tuple[float, float]:
    """(class c accuracy, overall accuracy) in percent."""
    hits = (logits.argmax(1) == labels).double()
    return 100.0 * hits[labels == c].mean().item(), 100.0 * hits.mean().item()


def test_cumulative_table_against_the_slow_path(trained) -> None:
    model, images, labels = trained
    layer, classes = "features.relu5", ["a", "b", "c", "d"]
    result = cumulative_ablation(
        model,
        layer,
        CPU,
        stream(model, layer, images, labels),
        labels.numpy(),
        classes,
        ranking_fraction=0.5,
        split_seed=3,
        random_seed=9,
        units_per_call=3,
    )
    table = result.table
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) == 4 * 4 * 2 and sorted(set(table["k"])) == [1, 2, 4, 8]
    assert result.method == "linear"
    mask = ranking_split(labels.numpy(), 0.5, 3)
    ranking, measure = torch.from_numpy(mask), torch.from_numpy(~mask)
    # Single-unit class drops on the ranking split, by the hook.
    with torch.no_grad():
        base_hits = model(images[ranking]).argmax(1) == labels[ranking]
    for unit in range(8):
        slow = hooked_set_logits(model, layer, images[ranking], [unit])
        hits = slow.argmax(1) == labels[ranking]
        for c in range(4):
            members = labels[ranking] == c
            expected = 100.0 * (base_hits[members].sum() - hits[members].sum()).item()
            assert result.class_drops[unit, c] == pytest.approx(expected / members.sum().item())
    # Every row against a full forward of the measure images with the set zeroed by a hook.
    with torch.no_grad():
        baseline = model(images[measure])
    for row in table.itertuples():
        units = [int(u) for u in row.units.split(";")]
        assert len(units) == row.k
        if row.selection == "top":
            assert units == result.rankings[row.class_index, : row.k].tolist()
        slow = hooked_set_logits(model, layer, images[measure], units)
        class_accuracy, overall = accuracies(slow, labels[measure], row.class_index)
        base_class, base_overall = accuracies(baseline, labels[measure], row.class_index)
        assert row.class_accuracy == pytest.approx(class_accuracy)
        assert row.overall_accuracy == pytest.approx(overall)
        assert row.class_drop == pytest.approx(base_class - class_accuracy)
        assert row.overall_drop == pytest.approx(base_overall - overall)
        assert row.n_ranking_images == int((labels[ranking] == row.class_index).sum())
        assert row.n_measure_images == int((labels[measure] == row.class_index).sum())
        assert row.n_measure_total == int(measure.sum())
    # k = U removes every unit: the network whose layer output is all zero.
    zero_hook = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _i, output: torch.zeros_like(output)
    )
    try:
        with torch.no_grad():
            zero = model(images[measure])
    finally:
        zero_hook.remove()
    assert margin(zero).min() > 1e-3
    everything = table[table["k"] == 8]
    assert len(everything) == 8
    for row in everything.itertuples():
        class_accuracy, overall = accuracies(zero, labels[measure], row.class_index)
        assert row.class_accuracy == pytest.approx(class_accuracy)
        assert row.overall_accuracy == pytest.approx(overall)
    assert result.skipped_classes == []


def test_random_control_is_seeded_and_nested(trained) -> None:
    model, images, labels = trained
    layer, classes = "features.relu3", ["a", "b", "c", "d"]

    def table(random_seed: int, random_draws: int = 1) -> pd.DataFrame:
        return cumulative_ablation(
            model,
            layer,
            CPU,
            stream(model, layer, images, labels, batch_size=16),
            labels.numpy(),
            classes,
            random_seed=random_seed,
            random_draws=random_draws,
            ks=[1, 3, 6],
            target_classes=[1, 2],
        ).table

    first, again, other = table(1), table(1), table(2)
    pd.testing.assert_frame_equal(first, again)
    assert sorted(set(first["class_index"])) == [1, 2] and sorted(set(first["k"])) == [1, 3, 6]
    top = first["selection"] == "top"
    pd.testing.assert_frame_equal(first[top], other[top])
    assert not first[~top]["units"].equals(other[~top]["units"])
    several = table(1, random_draws=3)
    assert len(several) == 2 * 3 * (1 + 3)
    random = several[several["selection"] == "random"]
    assert random.groupby(["class_index", "k"])["draw"].apply(sorted).map(
        tuple
    ).unique().tolist() == [(0, 1, 2)]
    pd.testing.assert_frame_equal(  # a draw does not depend on how many draws there are
        several[several["draw"] == 0].reset_index(drop=True), first.reset_index(drop=True)
    )
    assert random[random["k"] == 6].groupby("class_index")["units"].nunique().tolist() == [3, 3]
    for _, group in several.groupby(["class_index", "selection", "draw"]):
        sets = [row.split(";") for row in group.sort_values("k")["units"]]
        assert all(a == b[: len(a)] for a, b in zip(sets, sets[1:], strict=False))
    with pytest.raises(ValueError, match=r"must lie in 1\.\.8"):
        cumulative_ablation(
            model,
            layer,
            CPU,
            stream(model, layer, images, labels),
            labels.numpy(),
            classes,
            ks=[16],
        )


def test_hook_path_takes_images_and_skips_classes_without_images(trained) -> None:
    model, images, labels = trained
    keep = (labels != 3) | (torch.arange(len(labels)) == 3)  # class 3 keeps a single image
    images, labels = images[keep], labels[keep]
    layer, classes = "features.relu5", ["a", "b", "c", "d", "e"]
    result = cumulative_ablation(
        model,
        layer,
        CPU,
        stream(model, layer, images, labels),
        labels.numpy(),
        classes,
        ks=[2, 8],
        method="hook",
    )
    assert result.method == "hook"
    assert result.skipped_classes == ["d", "e"]  # one image (goes to ranking), no images
    assert sorted(set(result.table["class"])) == ["a", "b", "c"]
    reference = cumulative_ablation(
        model,
        layer,
        CPU,
        stream(model, layer, images, labels),
        labels.numpy(),
        classes,
        ks=[2, 8],
    )
    assert reference.method == "linear"
    columns = ["class", "k", "selection", "units", "class_accuracy", "overall_accuracy"]
    pd.testing.assert_frame_equal(result.table[columns], reference.table[columns])
