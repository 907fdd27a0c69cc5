"""Rotation control: Haar rotations, and ablating rotated directions exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from unitablation.ablation import AblationEngine
from unitablation.models import TINY_ARCH, ModelSpec, build_model
from unitablation.rotation import haar_rotation, parse_basis, rotate


def test_haar_rotation_is_a_seeded_proper_rotation() -> None:
    for channels in (1, 2, 7, 64):
        rotation = haar_rotation(channels, seed=3)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(channels), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
    assert np.array_equal(haar_rotation(16, 5), haar_rotation(16, 5))
    assert not np.allclose(haar_rotation(16, 5), haar_rotation(16, 6))
    with pytest.raises(ValueError, match="at least one channel"):
        haar_rotation(0, 1)


def test_haar_rotation_follows_the_recipe() -> None:
    """QR of the seeded Gaussian, columns sign-fixed by diag(R), first row negated if det < 0."""
    for seed in range(6):
        gaussian = np.random.default_rng(seed).standard_normal((5, 5))
        q, r = np.linalg.qr(gaussian)
        expected = q @ np.diag(np.sign(np.diag(r)))
        if np.linalg.det(expected) < 0:
            expected[0] *= -1
        np.testing.assert_allclose(haar_rotation(5, seed), expected, atol=1e-12)


def test_parse_basis() -> None:
    assert parse_basis("unit") is None and parse_basis("rot17") == 17
    with pytest.raises(ValueError, match="unknown basis 'rotx'"):
        parse_basis("rotx")


def slow_rotated_logits(model, layer, images, direction, value=0.0) -> torch.Tensor:
    """Whole network with a hook removing one direction: a' = a - r (r . a - value)."""

    def remove(_module, _inputs, output):
        coordinate = torch.einsum("c,bc...->b...", direction, output)
        shape = (1, -1, *([1] * (output.dim() - 2)))
        return output - direction.view(shape) * (coordinate - value).unsqueeze(1)

    handle = dict(model.named_modules())[layer].register_forward_hook(remove)
    try:
        with torch.no_grad():
            return model(images)
    finally:
        handle.remove()


def layer_maps(model, layer, images) -> torch.Tensor:
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("maps", out.clone())
    )
    with torch.no_grad():
        model(images)
    handle.remove()
    return captured["maps"]


@pytest.mark.parametrize("mean_mode", [False, True])
def test_rotated_ablation_equals_the_slow_path_tinyalex(mean_mode: bool) -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(TINY_ARCH, 5, batchnorm=True, widths=(6, 6, 8, 8, 8), hidden=12, image_size=32)
    ).eval()
    images = torch.randn(6, 3, 32, 32)
    rotation = torch.from_numpy(haar_rotation(8, 11)).float()
    for layer in ("features.relu3", "features.relu5"):
        maps = layer_maps(model, layer, images)
        values = rotate(maps, rotation).mean((0, 2, 3)) if mean_mode else None
        for method in ("auto", "hook"):
            engine = AblationEngine(
                model,
                layer,
                torch.device("cpu"),
                replacement=values,
                method=method,
                units_per_call=3,
                rotation=rotation,
            )
            assert engine.method == ("hook" if method == "hook" else "suffix")
            inputs = images if engine.needs_images else maps
            fast = engine.logits(inputs, range(8))
            for j in range(8):
                value = 0.0 if values is None else float(values[j])
                slow = slow_rotated_logits(model, layer, images, rotation[j], value)
                torch.testing.assert_close(fast[j], slow, rtol=1e-4, atol=1e-5)


def test_identity_rotation_equals_unit_ablation_and_resnet_layer4() -> None:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=6).eval()
    images = torch.randn(2, 3, 64, 64)
    maps = layer_maps(model, "layer4", images)
    identity = AblationEngine(model, "layer4", torch.device("cpu"), rotation=torch.eye(512))
    unit = AblationEngine(model, "layer4", torch.device("cpu"))
    torch.testing.assert_close(
        identity.logits(maps, range(0, 512, 37)),
        unit.logits(maps, range(0, 512, 37)),
        rtol=1e-5,
        atol=1e-5,
    )
    rotation = torch.from_numpy(haar_rotation(512, 2)).float()
    engine = AblationEngine(model, "layer4", torch.device("cpu"), rotation=rotation)
    fast = engine.logits(maps, [0, 100, 511])
    for row, j in enumerate([0, 100, 511]):
        slow = slow_rotated_logits(model, "layer4", images, rotation[j])
        torch.testing.assert_close(fast[row], slow, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no linear shortcut"):
        AblationEngine(model, "layer4", torch.device("cpu"), method="linear", rotation=rotation)
