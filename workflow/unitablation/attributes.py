"""Unit attributes (docs/definitions.md): weight L1 norms, selectivity, class correlation, extras.

Everything but the weight norms is computed from the stored spatial means a_u(x) and maxima of
the eval split, streamed in row batches so memory does not grow with the eval set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import fx, nn

from .suffix import NotACutPoint, analyse_head, split_suffix

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
SELECTIVITY_EPSILON = 1e-7
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
def outgoing_l1(
    model: nn.Module, layer: str, channels: int, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Sum of |weights| of the next parametrised op that reads each channel (NaN if not unique)."""
    try:
        weight, _ = _consumer_weight(model, layer, channels)
    except LookupError:
        return np.full(channels, np.nan)
    return _rotated_inputs(weight, rotation).abs().sum((0, 2)).numpy()


@torch.no_grad()
def outgoing_class(
    model: nn.Module, layer: str, channels: int, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Class whose logit a unit's outgoing weight raises most, where the head after the layer is
    linear (one op, then the logits); -1 elsewhere."""
    try:
        weight, linear_head = _consumer_weight(model, layer, channels)
    except LookupError:
        return np.full(channels, -1)
    if not linear_head or weight.shape[2] != 1:
        return np.full(channels, -1)
    return _rotated_inputs(weight, rotation)[:, :, 0].argmax(0).numpy()


def rotated_summaries(maps: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spatial means of max(z_j, 0) and spatial maxima of z_j for a batch of (B, C, h, w) maps.

    z_j = r_j . a at every position: the rotated units' maps. Rectified (docs/definitions.md), so
    activation-based attributes of a rotated unit read a non-negative map like a ReLU unit's.
    """
    z = np.einsum("jc,bc...->bj...", np.asarray(rotation, np.float64), maps.astype(np.float64))
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    return np.maximum(flat, 0.0).mean(axis=2), flat.max(axis=2)


@dataclass
class ActivationStatistics:
    """Streamed sums over eval images, enough for every activation-based attribute."""

    class_sums: np.ndarray  # (K, C) sum of a_u over V_c
    class_counts: np.ndarray  # (K,)
    sum_a: np.ndarray  # (C,)
    sum_a2: np.ndarray  # (C,)
    sum_p: np.ndarray  # (K,)
    sum_p2: np.ndarray  # (K,)
    sum_ap: np.ndarray  # (C, K)
    active: np.ndarray  # (C,) images where the unit's spatial max > 0
    count: int


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def accumulate(
    batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], num_classes: int
) -> ActivationStatistics:
    """Sum statistics over (means (B, C), maxima (B, C), labels (B,), logits (B, K)) batches."""
    stats: ActivationStatistics | None = None
    for means, maxima, labels, logits in batches:
        means = means.astype(np.float64)
        probabilities = softmax(logits)
        one_hot = np.eye(num_classes)[labels]
        if stats is None:
            channels = means.shape[1]
            stats = ActivationStatistics(
                class_sums=np.zeros((num_classes, channels)),
                class_counts=np.zeros(num_classes),
                sum_a=np.zeros(channels),
                sum_a2=np.zeros(channels),
                sum_p=np.zeros(num_classes),
                sum_p2=np.zeros(num_classes),
                sum_ap=np.zeros((channels, num_classes)),
                active=np.zeros(channels),
                count=0,
            )
        stats.class_sums += one_hot.T @ means
        stats.class_counts += one_hot.sum(0)
        stats.sum_a += means.sum(0)
        stats.sum_a2 += (means**2).sum(0)
        stats.sum_p += probabilities.sum(0)
        stats.sum_p2 += (probabilities**2).sum(0)
        stats.sum_ap += means.T @ probabilities
        stats.active += (maxima > 0).sum(0)
        stats.count += len(labels)
    if stats is None:
        raise ValueError("no eval images")
    return stats


def class_means(stats: ActivationStatistics) -> np.ndarray:
    """mu_c per unit (C, K); NaN for classes without eval images."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = stats.class_sums / stats.class_counts[:, None]
    means[stats.class_counts == 0] = np.nan
    return means.T


def selectivity(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class selectivity SI = (mu_max - mu_rest) / (mu_max + mu_rest + 1e-7) and its argmax class.

    mu (C, K) holds class means; classes with NaN means (no images) are left out of max and rest.
    When no class stands out (mu_max = mu_rest: all class means equal, as for a dead unit whose
    every mu_c is 0) SI is 0 by the formula and the selective class is -1 (undefined), not the
    first class.
    """
    present = ~np.isnan(mu)
    filled = np.where(present, mu, -np.inf)
    best = filled.argmax(axis=1)
    top = filled[np.arange(len(mu)), best]
    others = present.sum(axis=1) - 1
    rest = (np.where(present, mu, 0.0).sum(axis=1) - top) / np.maximum(others, 1)
    best = np.where(top > rest, best, -1)  # mu_rest is a mean of values <= mu_max
    return (top - rest) / (top + rest + SELECTIVITY_EPSILON), best


def class_correlation(stats: ActivationStatistics) -> np.ndarray:
    """Pearson rho (C, K) between a_u(x) and p_c(x) over all eval images; NaN where constant."""
    n = stats.count
    mean_a, mean_p = stats.sum_a / n, stats.sum_p / n
    covariance = stats.sum_ap / n - np.outer(mean_a, mean_p)
    var_a = np.maximum(stats.sum_a2 / n - mean_a**2, 0.0)
    var_p = np.maximum(stats.sum_p2 / n - mean_p**2, 0.0)
    scale = np.sqrt(np.outer(var_a, var_p))
    constant = (var_a <= 1e-12 * np.maximum(1.0, stats.sum_a2 / n))[:, None] | (var_p <= 1e-18)[
        None, :
    ]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = covariance / scale
    rho[constant] = np.nan
    return np.clip(rho, -1.0, 1.0)


def dead_units(stats: ActivationStatistics, rectified: bool) -> np.ndarray:
    """(C,) True for units never active on the eval set (spatial max <= 0 on every image) where
    maps are rectified (unit basis of a post-ReLU layer); elsewhere no unit is dead."""
    return (stats.active == 0) & rectified


def constant_units(stats: ActivationStatistics) -> np.ndarray:
    """(C,) True where a_u(x) has zero variance over the eval set (the correlation's tolerance)."""
    mean_square = stats.sum_a2 / stats.count
    variance = np.maximum(mean_square - (stats.sum_a / stats.count) ** 2, 0.0)
    return variance <= 1e-12 * np.maximum(1.0, mean_square)


def attribute_table(
    stats: ActivationStatistics,
    classes: Sequence[str],
    l1_in: np.ndarray,
    l1_in_bn: np.ndarray,
    l1_out: np.ndarray,
    out_class: np.ndarray | None = None,
    *,
    rectified: bool,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """attributes.csv rows (one per unit), plus the (C, K) class means and correlations.

    `rectified` says whether the maps are a ReLU's (unit basis of a post-ReLU layer): only
    there is a never-active unit `dead`. A dead unit has SI 0, no selective class, and a NaN
    class correlation with no correlated class; so has any `constant` unit (zero variance).
    """
    mu = class_means(stats)
    si, selective = selectivity(mu)
    rho = class_correlation(stats)
    undefined = np.isnan(rho).all(axis=1)
    correlated = np.where(undefined, -1, np.nanargmax(np.where(undefined[:, None], 0, rho), 1))
    with np.errstate(invalid="ignore"):
        best_rho = np.where(undefined, np.nan, np.nanmax(np.where(undefined[:, None], 0, rho), 1))
    mean = stats.sum_a / stats.count
    if out_class is None:
        out_class = np.full(len(mean), -1)
    table = pd.DataFrame(
        {
            "unit": np.arange(len(mean)),
            "l1_in": l1_in,
            "l1_in_bn": l1_in_bn,
            "l1_out": l1_out,
            "outgoing_class": [classes[k] if k >= 0 else "" for k in out_class],
            "selectivity": si,
            "selective_class": [classes[k] if k >= 0 else "" for k in selective],
            "class_correlation": best_rho,
            "correlated_class": [classes[k] if k >= 0 else "" for k in correlated],
            "mean_activation": mean,
            "active_fraction": stats.active / stats.count,
            "activation_variance": np.maximum(stats.sum_a2 / stats.count - mean**2, 0.0),
            "dead": dead_units(stats, rectified),
            "constant": constant_units(stats),
        }
    )
    return table, mu, rho
