"""One engine on every layer layout: single units and unit sets of conv, linear and token layers
(torchvision and timm CNNs and ViTs) equal an independent full forward with a replacing hook."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from unitablation.ablation import AblationEngine
from unitablation.cumulative import cumulative_ablation, ranking_split
from unitablation.models import TINY_ARCH, ModelSpec, build_model
from unitablation.rotation import haar_rotation
from unitablation.suffix import split_suffix

CPU = torch.device("cpu")


def assert_same_logits(fast: torch.Tensor, slow: torch.Tensor, what: str) -> None:
    """Equal up to float rounding: 1e-5 relative, and 1e-5 of the largest logit absolute."""
    scale = max(1.0, float(slow.abs().max()))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5 * scale, msg=what)


def raw_output(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """What `layer` returns for `images`, captured by a hook during a plain forward."""
    captured = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured["output"] = output.clone()  # returns None: the forward goes on unchanged

    handle = dict(model.named_modules())[layer].register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return captured["output"]


def ablated_copy(output, units, unit_dim, values, rotation) -> torch.Tensor:
    """One image batch's layer output with the units (or rotated directions) of `units` ablated:
    written per unit along the unit axis, every position (every token) included."""
    units = sorted(set(units))
    output = output.clone()
    if not units:
        return output
    last = output.movedim(unit_dim, -1)  # (..., C): a view, so writes reach `output`
    if rotation is None:
        for unit in units:
            last[..., unit] = 0.0 if values is None else float(values[unit])
        return output
    directions = rotation[units]  # (J, C)
    shift = last @ directions.T  # (..., J) coordinates z_j
    if values is not None:
        shift = shift - values[units]
    last -= shift @ directions
    return output


def hooked_logits(model, layer, images, entries, unit_dim, values=None, rotation=None):
    """Slow path: logits (E, B, K) of full forwards, each entry's units replaced by a hook.

    All entries share one forward of the images repeated E times; the hook edits copy e alone.
    """
    count, batch = len(entries), len(images)

    def replace(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        copies = output.view(count, batch, *output.shape[1:])
        edited = [
            ablated_copy(copies[row], units, unit_dim, values, rotation)
            for row, units in enumerate(entries)
        ]
        return torch.cat(edited)

    handle = dict(model.named_modules())[layer].register_forward_hook(replace)
    try:
        with torch.no_grad():
            logits = model(images.repeat(count, *([1] * (images.dim() - 1))))
    finally:
        handle.remove()
    return logits.view(count, batch, -1)


def unit_means(output: torch.Tensor, unit_dim: int, prefix: int = 0) -> torch.Tensor:
    """Each unit's mean over images and positions (tokens: over the patch tokens only)."""
    if unit_dim == 2:
        return output[:, prefix:].mean((0, 1))
    return output.mean([d for d in range(output.dim()) if d != 1])


def check_engine(model, layer, images, unit_dim, expected, sets, prefix=0) -> AblationEngine:
    """Every unit, and `sets`, in zero mode, mean mode and one rotated basis: engine logits
    equal the slow path's, through the `expected` method; returns the zero-mode engine."""
    model.eval()
    output = raw_output(model, layer, images)
    channels = output.shape[unit_dim]
    means = unit_means(output, unit_dim, prefix)
    rotation = torch.from_numpy(haar_rotation(channels, 5)).float()
    cases = {"zero": (None, None), "mean": (means, None), "rotated": (None, rotation)}
    engines = {}
    for name, (values, basis) in cases.items():
        engine = engines[name] = AblationEngine(
            model, layer, CPU, replacement=values, rotation=basis, unit_dim=unit_dim
        )
        wanted = "suffix" if basis is not None and expected == "linear" else expected
        assert engine.method == wanted, f"{name}: {engine.describe()}"
        inputs = images if engine.needs_images else output
        singles = [[unit] for unit in range(channels)]
        slow = hooked_logits(model, layer, images, singles, unit_dim, values, basis)
        fast = engine.logits(inputs, range(channels))
        assert_same_logits(fast, slow, f"{name} single units")
        slow_sets = hooked_logits(model, layer, images, sets, unit_dim, values, basis)
        fast_sets = engine.set_logits(inputs, sets)
        assert_same_logits(fast_sets, slow_sets, f"{name} sets")
        with torch.no_grad():
            plain = model(images)
        assert_same_logits(engine.baseline_logits(inputs), plain, f"{name} baseline")
        assert (slow - plain).abs().amax() > 1e-4, f"{name}: ablation changes nothing"
    return engines["zero"]


def some_sets(channels: int) -> list[list[int]]:
    """Multi-unit sets of a layer: a pair, a spread, every third unit, the first half, one unit.

    (Not all units: in a rotated basis removing (nearly) every direction leaves a residual small
    against its float noise, which a LayerNorm after the layer scales up to order one.)
    """
    return [
        [0, channels - 1],
        [1, 2, 5],
        list(range(0, channels, 3)),
        list(range(channels // 2)),
        [3],
    ]


def torchvision_vit() -> nn.Module:
    """A torchvision ViT small enough for CPU: 32 x 32 images, 16 patch tokens + class token."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=3,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    )
    nn.init.normal_(model.heads.head.weight, 0.0, 0.5)  # torchvision zero-initialises the head
    return model.eval()


def timm_vit() -> nn.Module:
    """timm's vit_tiny_patch16_224 at 32 x 32 with three blocks (random weights)."""
    torch.manual_seed(1)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=4, depth=3
    ).eval()


def test_torchvision_vit_block_output_by_suffix_replay() -> None:
    model = torchvision_vit()
    torch.manual_seed(2)
    images = torch.randn(3, 3, 32, 32)
    engine = check_engine(
        model, "encoder.layers.encoder_layer_1", images, 2, "suffix", some_sets(16), prefix=1
    )
    assert "no linear shortcut: token layout" in engine.describe()


def test_torchvision_vit_mlp_activation_falls_back_to_the_hook() -> None:
    """The MLP's GELU sits inside the block's residual: no cut point, the hook says why."""
    model = torchvision_vit()
    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_1.mlp.1"
    engine = check_engine(model, layer, images, 2, "hook", some_sets(32), prefix=1)
    assert engine.needs_images and "computed before it" in engine.describe()


def test_timm_vit_block_is_a_cut_point_despite_its_attn_mask_argument() -> None:
    """timm's forward(x, attn_mask=None): the suffix keeps attn_mask as an argument with its
    default, so block outputs are cut points and replaying the suffix is the full network."""
    model = timm_vit()
    torch.manual_seed(4)
    images = torch.randn(2, 3, 32, 32)
    suffix = split_suffix(model, "blocks.1")
    placeholders = [node for node in suffix.graph.nodes if node.op == "placeholder"]
    assert [node.target for node in placeholders][0] == "activation"
    assert {node.target: node.args for node in placeholders[1:]}.get("attn_mask") == (None,)
    with torch.no_grad():
        replayed = suffix(raw_output(model, "blocks.1", images))
        assert_same_logits(replayed, model(images), "suffix replay")
    engine = check_engine(model, "blocks.1", images, 2, "suffix", some_sets(192), prefix=1)
    assert engine.suffix is not None


def test_tinyalex_linear_layer() -> None:
    """classifier.relu6 returns (N, C): unit = feature, the closed form of its linear head."""
    torch.manual_seed(5)
    model = build_model(
        ModelSpec(TINY_ARCH, 5, widths=(6, 6, 8, 8, 8), hidden=12, image_size=32)
    ).eval()
    for module in model.modules():
        if isinstance(module, nn.Linear):  # larger than the default init, so units matter
            nn.init.normal_(module.weight, 0.0, 0.5)
    images = torch.randn(4, 3, 32, 32)
    engine = check_engine(model, "classifier.relu6", images, 1, "linear", some_sets(12))
    assert engine.head.tail is None


def calibrate(model: nn.Module, images: torch.Tensor) -> None:
    """Order-one activations and logits for a randomly initialised CNN (mobilenet's decay to
    ~1e-9 by its last block): batch norms take one batch's statistics, linear layers larger
    weights."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, its statistics
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 1.0 / module.in_features**0.5)
    with torch.no_grad():
        model.train()(images)
    model.eval()


@pytest.mark.parametrize(
    "name,layer,expected",
    [
        ("mobilenet_v3_small", "features.12", "linear"),
        ("timm:resnet18", "layer4", "linear"),
        ("timm:convnext_atto", "stages.3", "suffix"),
    ],
)
def test_more_cnns_take_the_fastest_exact_method(name: str, layer: str, expected: str) -> None:
    """mobilenet_v3_small: avgpool + flatten before its first Linear (shortcut with a tail);
    timm resnet18: global pool + fc (closed form); timm convnext_atto: its head's LayerNorm mixes
    channels, so suffix replay."""
    torch.manual_seed(6)
    if name.startswith("timm:"):
        model = timm.create_model(name[5:], pretrained=False, num_classes=6)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=6)
    calibrate(model, torch.randn(8, 3, 32, 32))
    images = torch.randn(2, 3, 32, 32)
    channels = raw_output(model, layer, images).shape[1]
    engine = check_engine(model, layer, images, 1, expected, some_sets(channels))
    if expected == "suffix":
        assert "not channel-wise" in engine.describe()


def test_tokens_refuse_the_linear_shortcut_with_the_reason() -> None:
    with pytest.raises(ValueError, match="layer encoder.ln: no linear shortcut .token layout"):
        AblationEngine(torchvision_vit(), "encoder.ln", CPU, method="linear", unit_dim=2)
    with pytest.raises(ValueError, match="unit_dim must be an axis >= 1"):
        AblationEngine(torchvision_vit(), "encoder.ln", CPU, unit_dim=0)


@pytest.mark.parametrize("method", ["auto", "hook"])
def test_cumulative_ablation_of_a_token_layer(method: str) -> None:
    """Ranking and measuring on a ViT block output (tokens) through one engine: each row's class
    accuracy equals a full forward of the measure images with the set replaced by a hook."""
    model = torchvision_vit()
    torch.manual_seed(7)
    images = torch.randn(20, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_1"
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[::3] = (labels[::3] + 1) % 5  # some wrong predictions

    def batches(needs_images: bool):
        for start in range(0, len(images), 8):
            part = images[start : start + 8]
            inputs = part if needs_images else raw_output(model, layer, part)
            yield inputs, labels[start : start + 8]

    result = cumulative_ablation(
        model,
        layer,
        CPU,
        batches,
        labels.numpy(),
        list("abcde"),
        ks=[1, 4, 16],
        method=method,
        unit_dim=2,
    )
    assert result.method == ("suffix" if method == "auto" else "hook")
    assert result.class_drops.shape == (16, 5)
    measure = torch.from_numpy(~ranking_split(labels.numpy(), 0.5, 0))
    for row in result.table.itertuples():
        units = [int(u) for u in row.units.split(";")]
        slow = hooked_logits(model, layer, images[measure], [units], 2)[0]
        members = labels[measure] == row.class_index
        hits = (slow.argmax(1) == labels[measure])[members].double()
        assert row.class_accuracy == pytest.approx(100.0 * hits.mean().item())
    assert np.isin(result.table["k"].unique(), [1, 4, 16]).all()
