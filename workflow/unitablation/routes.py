"""The three routes to ablated logits, fastest first: linear shortcut, suffix replay, hook.

`choose_route` resolves `auto` to the fastest exact route for a layer and builds its parts: the
fx suffix (layer output -> logits), and where the shortcut applies the head split around the
first linear op. `ablate_singles` and `ablate_sets` are the shortcut's arithmetic,
`single_call_forward` the hook route's full forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .replacement import UnitGroup
from .suffix import Head, NotACutPoint, explain_head, has_inplace_ops, split_suffix

METHODS = ("auto", "linear", "suffix", "hook")


def channel_weights(linear: nn.Linear | nn.Conv2d, channels: int) -> torch.Tensor:
    """The linear op's weight split by input channel, contiguous so that a group's blocks are
    one slice or gather: (C, s, O) for nn.Linear (channel c owns the s inputs c*s .. c*s+s-1 of
    the flattened features), (C, O, kh, kw) for nn.Conv2d."""
    weight = linear.weight.detach()
    if isinstance(linear, nn.Linear):
        if linear.in_features % channels:
            raise ValueError(
                f"linear op input of {linear.in_features} features has no {channels} equal blocks"
            )
        block = linear.in_features // channels
        return weight.view(linear.out_features, channels, block).permute(1, 2, 0).contiguous()
    if linear.padding_mode != "zeros":
        raise ValueError("conv shortcut needs zero padding")
    if linear.in_channels != channels:
        raise ValueError(f"conv op reads {linear.in_channels} channels, layer has {channels}")
    return weight.transpose(0, 1).contiguous()


def unit_rows(tensor: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """Rows `group.units` of `tensor` along dim 0: a view when the units are consecutive."""
    highest = int(group.units.max()) if group.start < 0 else group.start + group.size - 1
    if highest >= len(tensor):
        raise ValueError(f"unit index {highest} out of range: layer has {len(tensor)} units")
    if group.start >= 0:
        return tensor.narrow(0, group.start, group.size)
    return tensor.index_select(0, group.units.to(tensor.device))


def single_unit_changes(
    features: torch.Tensor, filler: torch.Tensor, channels: int
) -> torch.Tensor:
    """Each channel's own block of the linear op's input minus its filler's, channel first:
    (C, B, s) from (B, C*s) features of a Linear op, (C, B, h, w) from (B, C, h, w) of a conv."""
    change = features - filler
    if change.dim() == 2:
        change = change.view(len(change), channels, -1)
    return change.transpose(0, 1).contiguous()


def ablate_singles(
    linear: nn.Linear | nn.Conv2d,
    weights: torch.Tensor,
    output: torch.Tensor,
    changes: torch.Tensor,
    group: UnitGroup,
) -> torch.Tensor:
    """(G, B, O, ...) linear op output with unit g's change taken away in copy g: for each unit
    u only its own block, output - W_u (f_u - filler_u); no all-channel tensor."""
    own = unit_rows(changes, group)  # (G, B, s) or (G, B, h, w)
    blocks = unit_rows(weights, group)  # (G, s, O) or (G, O, kh, kw)
    if isinstance(linear, nn.Linear):
        if own.shape[-1] == 1:  # one input per channel (a pooled map): an outer product
            return torch.addcmul(output, own, blocks, value=-1.0)
        return torch.baddbmm(output.expand(group.size, *output.shape), own, blocks, alpha=-1.0)
    size, batch = own.shape[:2]
    removed = F.conv2d(
        own.transpose(0, 1),
        blocks.reshape(size * blocks.shape[1], 1, *blocks.shape[2:]),
        None,
        linear.stride,
        linear.padding,
        linear.dilation,
        groups=size,
    )  # (B, G*O, ho, wo)
    removed = removed.view(batch, size, *output.shape[1:]).transpose(0, 1)
    ablated = output.expand(size, *output.shape).clone(memory_format=torch.contiguous_format)
    return ablated.sub_(removed)


def ablate_sets(
    linear: nn.Linear | nn.Conv2d,
    features: torch.Tensor,
    filler: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """(G*B, O, ...) linear op output with set g's units at their filler in copy g: the op on
    the replaced features, one matmul or conv per call."""
    size, channels = mask.shape
    batch = len(features)
    blocks = features.view(batch, channels, -1)
    replaced = torch.where(
        mask.view(size, 1, channels, 1), filler.view(1, 1, channels, -1), blocks.unsqueeze(0)
    )
    return linear(replaced.view(size * batch, *features.shape[1:]))


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
