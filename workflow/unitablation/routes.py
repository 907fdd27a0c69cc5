"""The three routes to ablated logits, fastest first: linear shortcut, suffix replay, hook.

`choose_route` resolves `auto` to the fastest exact route for a layer and builds its parts: the
fx suffix (layer output -> logits), and where the shortcut applies the head split around the
first linear op. `channel_contributions` is the shortcut's arithmetic, `single_call_forward` the
hook route's full forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .suffix import Head, NotACutPoint, explain_head, has_inplace_ops, split_suffix

METHODS = ("auto", "linear", "suffix", "hook")


def channel_contributions(head: Head, features: torch.Tensor, channels: int) -> torch.Tensor:
    """Each input channel's share of the linear op's output (bias excluded).

    features: the `pre` output, (B, C, h, w) for a conv op or (B, C*s) for a linear op.
    Returns (B, C, O) for a linear op or (B, C, O, ho, wo) for a conv op; summed over C plus the
    bias it is the op's output.
    """
    linear = head.linear
    batch = features.shape[0]
    if isinstance(linear, nn.Linear):
        if features.dim() != 2 or features.shape[1] % channels:
            raise ValueError(f"linear op input {tuple(features.shape)} has no {channels} blocks")
        block = features.shape[1] // channels
        weight = linear.weight.view(linear.out_features, channels, block)
        shares = torch.einsum("bcs,ocs->bco", features.view(batch, channels, block), weight)
        # einsum hands back a strided view, from which index_select gathers element by element
        # (about 100x slower than from a contiguous copy of the same values).
        return shares.contiguous()
    if linear.padding_mode != "zeros":
        raise ValueError("conv shortcut needs zero padding")
    out_channels = linear.out_channels
    weight = linear.weight.transpose(0, 1).reshape(channels * out_channels, 1, *linear.kernel_size)
    shares = F.conv2d(
        features, weight, None, linear.stride, linear.padding, linear.dilation, groups=channels
    )
    return shares.view(batch, channels, out_channels, *shares.shape[2:])


@dataclass
class Route:
    """How ablated logits are computed: the method, and the fx suffix and head it uses."""

    method: str
    suffix: nn.Module | None
    head: Head | None
    why_not_faster: str  # why no suffix could be cut ('' when one was)
    why_not_linear: str = ""  # why the linear shortcut does not apply ('' when it does)


#: Why a token layout never takes the linear shortcut.
TOKENS_NO_SHORTCUT = (
    "token layout (N, L, C): the shortcut's per-channel arithmetic is written for channel-first "
    "conv and linear outputs"
)


def _linear_obstacle(rotated: bool, unit_dim: int) -> str:
    """Why the linear shortcut cannot apply whatever follows the layer ('' when it may)."""
    if rotated:
        return "rotated directions mix channels"
    if unit_dim != 1:
        return TOKENS_NO_SHORTCUT
    return ""


def choose_route(
    model: nn.Module,
    layer: str,
    device: torch.device,
    method: str,
    rotated: bool,
    unit_dim: int = 1,
) -> Route:
    """Resolve `auto` to the fastest exact method (linear, suffix, hook) and build its parts.

    Rotated directions mix channels and token layouts (`unit_dim` 2) hold units along the last
    axis, so neither takes the linear shortcut; a requested method that cannot work raises
    instead of silently falling back.
    """
    if method not in METHODS:
        raise ValueError(f"unknown ablation method {method!r}; expected one of {METHODS}")
    obstacle = _linear_obstacle(rotated, unit_dim)
    if rotated and method == "linear":
        raise ValueError("rotated directions mix channels: no linear shortcut; use suffix")
    if obstacle and method == "linear":
        raise ValueError(f"layer {layer}: no linear shortcut ({obstacle}); use suffix")
    suffix, head, why_not_faster = None, None, ""
    why_not_linear = obstacle or "no single linear op after it"
    if method in ("suffix", "hook") and not obstacle:
        why_not_linear = f"method {method} requested"
    if method != "hook":
        try:
            suffix = split_suffix(model, layer).to(device)
            if method in ("auto", "linear") and not obstacle:
                head, why_not_linear = explain_head(suffix)
        except NotACutPoint as error:
            if method != "auto":
                raise
            why_not_faster = str(error)
    if method == "linear" and head is None:
        raise ValueError(f"layer {layer}: no linear shortcut ({why_not_linear})")
    if method == "auto":
        method = "linear" if head else "suffix" if suffix is not None else "hook"
    if suffix is not None:
        suffix = protect_inputs(suffix)
    if head is not None:
        tail = None if head.tail is None else protect_inputs(head.tail)
        head = Head(pre=protect_inputs(head.pre), linear=head.linear, tail=tail)
    return Route(method, suffix, head, why_not_faster, why_not_linear)


class _CopyingInput(nn.Module):
    """Runs a module on a copy of its input, so in-place ops in it never touch the caller's."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The wrapped module's output for a copy of `inputs`."""
        return self.module(inputs.clone())


def copies_input(module: nn.Module | None) -> bool:
    """Whether `module` is a copying wrapper (it then holds a second copy of its input)."""
    return isinstance(module, _CopyingInput)


def protect_inputs(module: fx.GraphModule) -> nn.Module:
    """`module` itself, or a copying wrapper when it holds in-place ops (ReLU(inplace=True)
    right after the layer would otherwise rectify the stored maps that later ablations read)."""
    return _CopyingInput(module) if has_inplace_ops(module) else module


def single_call_forward(
    model: nn.Module,
    module: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    hook: Callable | None = None,
) -> torch.Tensor:
    """`model(inputs)` with `hook` on `module`, refusing a module called more than once.

    A module reused within one forward (torchvision ResNet's `layer4.1.relu`) has no single
    output: a hook would replace the unit at every call while the store keeps only the last.
    """
    calls = []

    def counted(hooked: nn.Module, hook_inputs: object, output: torch.Tensor):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError(
                f"layer {layer} is called more than once in one forward pass, so it has no "
                "single output to ablate; study the block that encloses it instead"
            )
        return None if hook is None else hook(hooked, hook_inputs, output)

    handle = module.register_forward_hook(counted)
    try:
        return model(inputs)
    finally:
        handle.remove()
