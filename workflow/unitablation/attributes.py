"""Unit attributes (docs/definitions.md): weight L1 norms here, and attributes.csv assembled.

Everything but the weight norms is computed from the stored spatial means a_u(x) and maxima of
the eval split, streamed in row batches so memory does not grow with the eval set: the sums live
in activation_statistics (torch-free; its names are re-exported here), and each attribute's
computation is its entry of attribute_registry, which attribute_table iterates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import fx, nn

from .activation_statistics import (
    SELECTIVITY_EPSILON,
    ActivationStatistics,
    accumulate,
    class_correlation,
    class_means,
    constant_units,
    dead_units,
    rotated_summaries,
    selectivity,
    softmax,
)
from .attribute_registry import ATTRIBUTES, UnitAttribute
from .suffix import NotACutPoint, analyse_head, split_suffix

__all__ = [
    "SELECTIVITY_EPSILON",
    "ActivationStatistics",
    "Producer",
    "accumulate",
    "attribute_table",
    "class_correlation",
    "class_means",
    "constant_units",
    "dead_units",
    "find_producer",
    "incoming_l1",
    "is_rectified",
    "outgoing_attributes",
    "outgoing_class",
    "outgoing_l1",
    "rotated_summaries",
    "selectivity",
    "softmax",
]

#: Element-wise activations: output channel u depends on input channel u alone.
ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Mish,
)
#: Modules that may stand between a unit's conv/linear op and the studied layer without mixing
#: channels (pooling acts per channel; dropout is the identity in eval mode).
PASS_THROUGH = (
    *ELEMENTWISE,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Identity,
)
#: Modules whose output is never negative: a unit there with max <= 0 everywhere is all zero.
RECTIFIERS = (nn.ReLU, nn.ReLU6)
#: Modules that keep a non-negative input non-negative, walked through to find a rectifier.
KEEPS_SIGN = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)


@dataclass
class Producer:
    """The parametrised op whose output channel u is unit u, and a batch norm after it if any."""

    op: nn.Conv2d | nn.Linear | None
    batchnorm: nn.BatchNorm2d | nn.BatchNorm1d | None
    reason: str = ""


def find_producer(model: nn.Module, layer: str) -> Producer:
    """Walk back from `layer` to the conv/linear op whose output channel u is unit u.

    Inside a Sequential the walk follows its children; elsewhere (a ViT's MLP, whose `act`
    follows `fc1`) it follows the parent's torch.fx graph. Token layers work as linear ones:
    the Linear's output feature u is unit u. Anything untraceable gives no producer (NaN norms).
    """
    module = model.get_submodule(layer)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return Producer(module, None)
    parent_path, _, name = layer.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.Sequential):
        names = [child for child, _ in parent.named_children()]
        chain = [parent.get_submodule(child) for child in reversed(names[: names.index(name) + 1])]
        end = f"no conv or linear op before {layer} in its Sequential"
    else:
        chain, end = _traced_chain(parent, name, layer)
    return _producer_in(chain, layer, end)


def _producer_in(chain: Sequence[nn.Module], layer: str, end: str) -> Producer:
    """The first conv/linear op of `chain` (the layer, then what feeds it, backwards), allowing
    one batch norm and channel-wise modules in between; `end` says why the chain stopped."""
    batchnorm = None
    for child in chain:
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            return Producer(child, batchnorm)
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if batchnorm is not None:
                return Producer(None, None, "two batch norms before the layer")
            batchnorm = child
        elif not isinstance(child, PASS_THROUGH):
            return Producer(None, None, f"{type(child).__name__} mixes channels before {layer}")
    return Producer(None, None, end)


def _traced_chain(parent: nn.Module, name: str, layer: str) -> tuple[list[nn.Module], str]:
    """Modules from child `name` back through single-input module calls of `parent`'s fx graph,
    and why the walk stopped there."""
    try:
        graph = fx.symbolic_trace(parent).graph
    except Exception as error:  # noqa: BLE001 - fx fails in many ways on dynamic code
        return [], f"{type(parent).__name__} around {layer} is not fx-traceable ({error})"
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == name]
    if len(calls) != 1:
        return [], f"{layer} is not called exactly once as a module of its parent"
    chain: list[nn.Module] = []
    node = calls[0]
    while node.op == "call_module":
        chain.append(parent.get_submodule(str(node.target)))
        if len(node.all_input_nodes) != 1:
            return chain, f"{node.target} before {layer} has {len(node.all_input_nodes)} inputs"
        node = node.all_input_nodes[0]
    return chain, f"{node.op} {node.target} feeds {layer}, not a conv or linear module"


def is_rectified(model: nn.Module, layer: str) -> bool:
    """Whether `layer`'s output is a ReLU's, directly or through sign-keeping Sequential siblings.

    Only there does "never active" (max <= 0 on every image) mean the unit is all zero, i.e.
    dead; a pre-activation unit or an unrecognised module is never called dead.
    """
    module = model.get_submodule(layer)
    if isinstance(module, RECTIFIERS):
        return True
    parent_path, _, name = layer.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if not isinstance(module, KEEPS_SIGN) or not isinstance(parent, nn.Sequential):
        return False
    names = [child for child, _ in parent.named_children()]
    for child_name in reversed(names[: names.index(name)]):
        child = parent.get_submodule(child_name)
        if isinstance(child, RECTIFIERS):
            return True
        if not isinstance(child, KEEPS_SIGN):
            return False
    return False


def _rotated(weight: torch.Tensor, rotation: np.ndarray | None) -> torch.Tensor:
    """Weights of the rotated units: row j = sum_k r_jk * row k (rows = the layer's channels)."""
    if rotation is None:
        return weight
    matrix = torch.from_numpy(np.asarray(rotation, dtype=np.float64))
    return (matrix @ weight.flatten(1)).view(weight.shape)


@torch.no_grad()
def incoming_l1(
    producer: Producer, channels: int, rotation: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of |weights| of the filter making each unit (bias excluded), and the same with the
    batch-norm scale gamma / sqrt(var + eps) folded into the filter when a batch norm follows.

    With a rotation R the filter of direction j is sum_k r_jk W_k (docs/definitions.md).
    """
    if producer.op is None:
        return np.full(channels, np.nan), np.full(channels, np.nan)
    weight = producer.op.weight.detach().double()
    if len(weight) != channels:
        raise ValueError(f"producer has {len(weight)} output channels, layer has {channels}")
    folded = weight
    norm = producer.batchnorm
    if norm is not None:
        scale = norm.weight.detach().double() if norm.affine else torch.ones(channels).double()
        scale = scale / torch.sqrt(norm.running_var.double() + norm.eps)
        folded = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    l1 = _rotated(weight, rotation).abs().flatten(1).sum(1)
    l1_folded = _rotated(folded, rotation).abs().flatten(1).sum(1)
    return l1.numpy(), l1_folded.numpy()


def _consumer_weight(model: nn.Module, layer: str, channels: int) -> tuple[torch.Tensor, bool]:
    """(O, C, s) weights of the one op reading the layer, and whether they give the logits."""
    try:
        head = analyse_head(split_suffix(model, layer))
    except NotACutPoint:
        head = None
    if head is None:
        raise LookupError(f"no single linear or conv op reads {layer}")
    weight = head.linear.weight.detach().double()
    if isinstance(head.linear, nn.Linear):
        if weight.shape[1] % channels:
            raise LookupError(f"{weight.shape[1]} inputs of the op after {layer} are no blocks")
        weight = weight.view(weight.shape[0], channels, -1)
    else:
        weight = weight.flatten(2)
    return weight, head.tail is None


def _rotated_inputs(weight: torch.Tensor, rotation: np.ndarray | None) -> torch.Tensor:
    """Consumer weights read by the rotated coordinates: W_rot[o, j] = sum_k W[o, k] r_jk."""
    if rotation is None:
        return weight
    matrix = torch.from_numpy(np.asarray(rotation, dtype=np.float64))
    return torch.einsum("oks,jk->ojs", weight, matrix)


@torch.no_grad()
def outgoing_attributes(
    model: nn.Module, layer: str, channels: int, rotation: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`outgoing_l1` and `outgoing_class` from one fx trace of the model after `layer` (the
    trace costs more than both attributes)."""
    try:
        weight, linear_head = _consumer_weight(model, layer, channels)
    except LookupError:
        return np.full(channels, np.nan), np.full(channels, -1)
    rotated = _rotated_inputs(weight, rotation)
    l1 = rotated.abs().sum((0, 2)).numpy()
    if not linear_head or weight.shape[2] != 1:
        return l1, np.full(channels, -1)
    return l1, rotated[:, :, 0].argmax(0).numpy()


def outgoing_l1(
    model: nn.Module, layer: str, channels: int, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Sum of |weights| of the next parametrised op that reads each channel (NaN if not unique)."""
    return outgoing_attributes(model, layer, channels, rotation)[0]


def outgoing_class(
    model: nn.Module, layer: str, channels: int, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Class whose logit a unit's outgoing weight raises most, where the head after the layer is
    linear (one op, then the logits); -1 elsewhere."""
    return outgoing_attributes(model, layer, channels, rotation)[1]


def _class_names(indices: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Class names of class indices, "" where the index is -1 (no such class)."""
    return [classes[k] if k >= 0 else "" for k in indices]


def _columns(
    attributes: Sequence[UnitAttribute], given: dict[str, np.ndarray]
) -> list[UnitAttribute]:
    """The entries attributes.csv holds, in its column order: each numeric attribute of the
    weights or the statistics (registry order) followed by its argmax class, then any other
    class attribute of the statistics."""
    held = [a for a in attributes if a.source == "statistics" or a.name in given]
    names = {a.name: a for a in held}
    ordered: list[UnitAttribute] = []
    for entry in held:
        if entry.kind != "numeric":
            continue
        ordered.append(entry)
        if entry.argmax_class in names:
            ordered.append(names[entry.argmax_class])
    ordered += [a for a in held if a not in ordered]
    return ordered


def attribute_table(
    stats: ActivationStatistics,
    classes: Sequence[str],
    l1_in: np.ndarray,
    l1_in_bn: np.ndarray,
    l1_out: np.ndarray,
    out_class: np.ndarray | None = None,
    *,
    rectified: bool,
    attributes: Sequence[UnitAttribute] = ATTRIBUTES,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """attributes.csv rows (one per unit), plus the (C, K) class means and correlations.

    The weight columns are the arguments; every `attributes` entry of source "statistics" is
    computed by its `from_statistics` (class indices become class names, "" for -1).
    `rectified` says whether the maps are a ReLU's (unit basis of a post-ReLU layer): only
    there is a never-active unit `dead`. A dead unit has SI 0, no selective class, and a NaN
    class correlation with no correlated class; so has any `constant` unit (zero variance).
    """
    channels = len(stats.sum_a)
    given = {
        "l1_in": l1_in,
        "l1_in_bn": l1_in_bn,
        "l1_out": l1_out,
        "outgoing_class": np.full(channels, -1) if out_class is None else out_class,
    }
    weights = {a.name for a in attributes if a.source == "weights"}
    if weights != set(given):
        raise ValueError(
            f"the attribute table's weight attributes {sorted(weights)} are not the ones "
            f"attribute_table is given {sorted(given)}"
        )
    columns: dict[str, object] = {"unit": np.arange(channels)}
    for entry in _columns(attributes, given):
        values = (
            given[entry.name] if entry.from_statistics is None else entry.from_statistics(stats)
        )
        if np.shape(values) != (channels,):
            raise ValueError(
                f"attribute {entry.name!r}: {np.shape(values)} values for {channels} units"
            )
        columns[entry.name] = _class_names(values, classes) if entry.kind == "class" else values
    columns["dead"] = dead_units(stats, rectified)
    columns["constant"] = constant_units(stats)
    return pd.DataFrame(columns), class_means(stats), class_correlation(stats)
