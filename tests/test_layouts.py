"""Layer layouts: canonical maps round-trip exactly; layouts are read off real models' outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unitablation.layer_probe import layer_layouts, model_prefix_tokens
from unitablation.layouts import Layout, infer_layout


def hand_maps(tokens: torch.Tensor, prefix: int, side: int) -> torch.Tensor:
    """Patch tokens on their grid by a per-position loop: token prefix + i * side + j -> (i, j)."""
    n, _, c = tokens.shape
    maps = torch.empty(n, c, side, side)
    for i in range(side):
        for j in range(side):
            maps[:, :, i, j] = tokens[:, prefix + i * side + j, :]
    return maps


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_tokens_round_trip_and_patch_grid(prefix: int) -> None:
    torch.manual_seed(prefix)
    tokens = torch.randn(3, prefix + 16, 6)
    layout = infer_layout(tokens, "blocks.0", prefix_tokens=prefix)
    assert layout == Layout("tokens", 6, (4, 4), prefix) and layout.unit_dim == 2
    assert layout.output_shape() == (prefix + 16, 6)
    maps = layout.to_maps(tokens)
    torch.testing.assert_close(maps, hand_maps(tokens, prefix, 4), rtol=0, atol=0)
    head = layout.prefix_tokens(tokens)
    if prefix:
        torch.testing.assert_close(head, tokens[:, :prefix], rtol=0, atol=0)
    else:
        assert head is None
    torch.testing.assert_close(layout.from_maps(maps, head), tokens, rtol=0, atol=0)
    # The same on numpy arrays (readers of the store have no torch).
    array = tokens.numpy()
    array_head = None if head is None else head.numpy()
    back = layout.from_maps(layout.to_maps(array), array_head)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, array)


def test_conv_and_linear_round_trip() -> None:
    conv, linear = torch.randn(2, 5, 3, 4), torch.randn(2, 7)
    conv_layout, linear_layout = infer_layout(conv, "c"), infer_layout(linear, "l")
    assert conv_layout == Layout("conv", 5, (3, 4)) and conv_layout.unit_dim == 1
    assert linear_layout == Layout("linear", 7, (1, 1)) and linear_layout.unit_dim == 1
    assert conv_layout.output_shape() == (5, 3, 4) and linear_layout.output_shape() == (7,)
    torch.testing.assert_close(conv_layout.to_maps(conv), conv, rtol=0, atol=0)
    assert linear_layout.to_maps(linear).shape == (2, 7, 1, 1)
    torch.testing.assert_close(linear_layout.to_maps(linear)[:, :, 0, 0], linear, rtol=0, atol=0)
    for layout, output in ((conv_layout, conv), (linear_layout, linear)):
        assert layout.prefix_tokens(output) is None
        torch.testing.assert_close(layout.from_maps(layout.to_maps(output)), output)


def test_json_and_describe() -> None:
    layout = Layout("tokens", 192, (2, 2), 1)
    assert Layout.from_json(layout.to_json()) == layout
    assert layout.describe() == (
        "tokens (N, 5, 192): 1 prefix + 2 x 2 patch tokens, unit = feature channel"
    )
    assert Layout("conv", 64, (7, 7)).describe() == "conv (N, 64, 7, 7): unit = channel, 7 x 7 map"
    with pytest.raises(ValueError, match="not a layer layout"):
        Layout.from_json('{"kind": "conv"}')
    with pytest.raises(ValueError, match="kind"):
        Layout("nchw", 3, (1, 1))
    # numpy ints (from HDF5 attributes) and lists become plain ints and tuples
    same = Layout("tokens", np.int64(192), [np.int64(2), 2], np.int64(1))
    assert same == layout and same.to_json() == layout.to_json()


def test_bad_outputs_name_the_layer_and_shape() -> None:
    with pytest.raises(ValueError, match=r"layer blocks\.3 .*\(2, 3, 4, 5, 6\)"):
        infer_layout(torch.zeros(2, 3, 4, 5, 6), "blocks.3")
    with pytest.raises(ValueError, match=r"layer head .*\(2, 7, 16\).*prefix_tokens"):
        infer_layout(torch.zeros(2, 7, 16), "head")
    with pytest.raises(ValueError, match=r"layer head .*\(2, 7, 16\).*prefix_tokens"):
        infer_layout(torch.zeros(2, 7, 16), "head", prefix_tokens=1)
    with pytest.raises(ValueError, match=r"layer pool .*\(4,\)"):
        infer_layout(torch.zeros(4), "pool")
    with pytest.raises(ValueError, match=r"layer attn returns a tuple"):
        infer_layout((torch.zeros(2, 5, 4), None), "attn")
    layout = Layout("tokens", 4, (2, 2), 1)
    with pytest.raises(ValueError, match="does not fit"):
        layout.to_maps(torch.zeros(2, 6, 4))
    with pytest.raises(ValueError, match="prefix tokens are needed"):
        layout.from_maps(torch.zeros(2, 4, 2, 2))


def test_inferred_prefix_from_token_count() -> None:
    assert infer_layout(torch.zeros(1, 17, 8), "b").prefix == 1
    assert infer_layout(torch.zeros(1, 198, 8), "b") == Layout("tokens", 8, (14, 14), 2)
    assert infer_layout(torch.zeros(1, 16, 8), "b") == Layout("tokens", 8, (4, 4), 0)


def torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=4,
    )


def test_layer_layouts_of_a_torchvision_vit_on_meta() -> None:
    with torch.device("meta"):
        model = torchvision_vit()
    assert model_prefix_tokens(model) == 1
    block, hidden = "encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_1.mlp.1"
    layouts = layer_layouts(model, [block, hidden, "conv_proj", "heads.head"], side=32)
    assert layouts[block] == Layout("tokens", 16, (4, 4), 1)
    assert layouts[hidden] == Layout("tokens", 32, (4, 4), 1)
    assert layouts["conv_proj"] == Layout("conv", 16, (4, 4))
    assert layouts["heads.head"] == Layout("linear", 4, (1, 1))


def test_layer_layouts_of_a_timm_vit() -> None:
    import timm

    with torch.device("meta"):
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=4
        )
    assert model_prefix_tokens(model) == 1
    layouts = layer_layouts(model, ["blocks.11", "blocks.0.mlp.act", "head"], side=32)
    assert layouts["blocks.11"] == Layout("tokens", 192, (2, 2), 1)
    assert layouts["blocks.0.mlp.act"] == Layout("tokens", 768, (2, 2), 1)
    assert layouts["head"] == Layout("linear", 4, (1, 1))


def test_timm_register_tokens_come_from_the_model() -> None:
    """5 prefix tokens on a 2 x 2 grid (9 tokens) would be read as a 3 x 3 grid by the count
    alone; the model's `num_prefix_tokens` says otherwise, and the round trip is exact."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        num_classes=4,
        reg_tokens=4,
        depth=2,
    ).eval()
    layout = layer_layouts(model, ["blocks.1"], side=32)["blocks.1"]
    assert layout == Layout("tokens", 192, (2, 2), 5)
    captured = {}
    model.blocks[1].register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    tokens = captured["x"]
    maps = layout.to_maps(tokens)
    torch.testing.assert_close(maps, hand_maps(tokens, 5, 2), rtol=0, atol=0)
    back = layout.from_maps(maps, layout.prefix_tokens(tokens))
    torch.testing.assert_close(back, tokens, rtol=0, atol=0)


def test_layer_layouts_explicit_prefix_wins_and_errors_name_the_layer() -> None:
    class Tokens(nn.Module):
        """Emits (N, 7, 4) tokens: 3 prefix + 2 x 2 patches, a count nothing can infer."""

        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(3, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.mix(x.flatten(2)[:, :, :7].transpose(1, 2))
            return self.head(tokens.mean(1))

    with torch.device("meta"):
        model = Tokens()
    assert model_prefix_tokens(model) is None
    with pytest.raises(ValueError, match=r"layer mix .*\(1, 7, 4\)"):
        layer_layouts(model, ["mix"], side=8)
    assert layer_layouts(model, ["mix"], side=8, prefix_tokens=3)["mix"].prefix == 3
    with pytest.raises(ValueError, match="no layer"):
        layer_layouts(model, ["nope"], side=8)


def test_layer_layouts_refuses_a_module_called_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.act(x)).mean((2, 3))

    with pytest.raises(ValueError, match="layer act runs 2 times"):
        layer_layouts(Twice(), ["act"], side=4)


def test_layer_layouts_refuse_a_channels_last_output() -> None:
    """timm's ConvNeXt (conv_mlp off, the default above atto) runs its block MLP on
    (N, H, W, C): reading that as NCHW would make image rows the units, so it is refused; the
    block output (NCHW) is a conv layout."""
    import timm

    with torch.device("meta"):
        model = timm.create_model("convnext_atto", pretrained=False, num_classes=4, conv_mlp=False)
    with pytest.raises(ValueError, match=r"layer stages\.0\.blocks\.0\.mlp\.fc1 .*\(N, H, W, C\)"):
        layer_layouts(model, ["stages.0.blocks.0.mlp.fc1"], side=32)
    layout = layer_layouts(model, ["stages.0.blocks.0"], side=32)["stages.0.blocks.0"]
    assert layout == Layout("conv", 40, (8, 8))
