"""Layer layouts of a built network: one probing forward pass, with hooks, per model.

The torch side of `layouts`: which layout each studied layer's output has, the prefix tokens a
vision transformer states, and refusals of outputs no layout reads (a module that runs twice,
channels-last outputs).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .layouts import Layout, infer_layout


def model_prefix_tokens(model: nn.Module) -> int | None:
    """Prefix tokens the model states: timm's `num_prefix_tokens`, 1 for a torchvision
    VisionTransformer (its class token); None when no (sub)module says."""
    for module in model.modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        if _is_torchvision_vit(module):
            return 1
    return None


def _is_torchvision_vit(module: nn.Module) -> bool:
    """True for torchvision's VisionTransformer (a `class_token` parameter and an encoder)."""
    kind = type(module)
    return (
        kind.__name__ == "VisionTransformer"
        and kind.__module__.startswith("torchvision.")
        and hasattr(module, "class_token")
    )


def layer_layouts(
    model: nn.Module, layers: Sequence[str], side: int, prefix_tokens: int | None = None
) -> dict[str, Layout]:
    """Layouts of `layers` from one forward of a 1 x 3 x side x side input on the model's device.

    Build the model on the meta device to spend no memory. Prefix tokens: the argument, else
    what the model states, else inferred from each token count.
    """
    modules = dict(model.named_modules())
    missing = [layer for layer in layers if not layer or layer not in modules]
    if missing:
        valid = ", ".join(name for name in modules if name)
        raise ValueError(f"no layer(s) {missing} in model; valid module paths are: {valid}")
    outputs: dict[str, list[Any]] = {layer: [] for layer in layers}
    handles = [modules[layer].register_forward_hook(_recorder(outputs[layer])) for layer in layers]
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, side, side, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if prefix_tokens is None:
        prefix_tokens = model_prefix_tokens(model)
    layouts = {layer: _single_layout(outputs[layer], layer, prefix_tokens) for layer in layers}
    for layer, layout in layouts.items():
        _refuse_channels_last(modules[layer], layer, layout)
    return layouts


def _recorder(calls: list[Any]) -> Callable[..., None]:
    """A forward hook that appends each output of its module to `calls`."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        calls.append(output)

    return hook


def _single_layout(calls: list[Any], layer: str, prefix_tokens: int | None) -> Layout:
    """The layout of a layer that ran exactly once in the forward pass."""
    if len(calls) != 1:
        raise ValueError(
            f"layer {layer} runs {len(calls)} times in one forward pass, so it has no single "
            "output; study a module that runs exactly once (e.g. the block that encloses it)"
        )
    return infer_layout(calls[0], layer, prefix_tokens)


def _refuse_channels_last(module: nn.Module, layer: str, layout: Layout) -> None:
    """A Linear or LayerNorm with a 4-D output works on the last axis: its output is
    channels-last (N, H, W, C), as inside timm's ConvNeXt blocks, not (N, C, H, W)."""
    if layout.kind == "conv" and isinstance(module, (nn.Linear, nn.LayerNorm)):
        raise ValueError(
            f"layer {layer} is a {type(module).__name__} with a 4-D output, so its channels are "
            f"the last axis (N, H, W, C), which no layout reads; study the enclosing block"
        )
