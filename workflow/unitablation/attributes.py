"""Unit attributes of SCIENCE.md: weight L1 norms, class selectivity, class correlation, extras.

Everything but the weight norms is computed from the stored spatial means a_u(x) and maxima of
the eval split, streamed in row batches so memory does not grow with the eval set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .suffix import NotACutPoint, analyse_head, split_suffix

#: Modules that may stand between a unit's conv and the studied layer without mixing channels.
PASS_THROUGH = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Identity,
)
SELECTIVITY_EPSILON = 1e-7


@dataclass
class Producer:
    """The parametrised op whose output channel u is unit u, and a batch norm after it if any."""

    op: nn.Conv2d | nn.Linear | None
    batchnorm: nn.BatchNorm2d | nn.BatchNorm1d | None
    reason: str = ""


def find_producer(model: nn.Module, layer: str) -> Producer:
    """Walk back from `layer` through its Sequential siblings to the conv/linear op feeding it."""
    module = model.get_submodule(layer)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return Producer(module, None)
    parent_path, _, name = layer.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if not isinstance(parent, nn.Sequential):
        return Producer(None, None, f"{layer} is not inside a Sequential")
    names = [child for child, _ in parent.named_children()]
    batchnorm = None
    for child_name in reversed(names[: names.index(name) + 1]):
        child = parent.get_submodule(child_name)
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            return Producer(child, batchnorm)
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if batchnorm is not None:
                return Producer(None, None, "two batch norms before the layer")
            batchnorm = child
        elif not isinstance(child, PASS_THROUGH):
            return Producer(None, None, f"{type(child).__name__} mixes channels before {layer}")
    return Producer(None, None, f"no conv or linear op before {layer} in its Sequential")


@torch.no_grad()
def incoming_l1(producer: Producer, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of |weights| of the filter making each unit (bias excluded), and the same times the
    batch-norm scale |gamma / sqrt(var + eps)| when a batch norm follows (else unchanged)."""
    if producer.op is None:
        return np.full(channels, np.nan), np.full(channels, np.nan)
    weight = producer.op.weight.detach().double()
    l1 = weight.abs().flatten(1).sum(1)
    if len(l1) != channels:
        raise ValueError(f"producer has {len(l1)} output channels, layer has {channels}")
    folded = l1.clone()
    norm = producer.batchnorm
    if norm is not None:
        scale = norm.weight.detach().double() if norm.affine else torch.ones_like(l1)
        folded = l1 * (scale / torch.sqrt(norm.running_var.double() + norm.eps)).abs()
    return l1.numpy(), folded.numpy()


@torch.no_grad()
def outgoing_l1(model: nn.Module, layer: str, channels: int) -> np.ndarray:
    """Sum of |weights| of the next parametrised op that reads each channel (NaN if not unique)."""
    try:
        head = analyse_head(split_suffix(model, layer))
    except NotACutPoint:
        head = None
    if head is None:
        return np.full(channels, np.nan)
    weight = head.linear.weight.detach().double().abs()
    if isinstance(head.linear, nn.Linear):
        if weight.shape[1] % channels:
            return np.full(channels, np.nan)
        return weight.view(weight.shape[0], channels, -1).sum((0, 2)).numpy()
    return weight.sum((0, 2, 3)).numpy()


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
    """
    present = ~np.isnan(mu)
    filled = np.where(present, mu, -np.inf)
    best = filled.argmax(axis=1)
    top = filled[np.arange(len(mu)), best]
    others = present.sum(axis=1) - 1
    rest = (np.where(present, mu, 0.0).sum(axis=1) - top) / np.maximum(others, 1)
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


def attribute_table(
    stats: ActivationStatistics,
    classes: Sequence[str],
    l1_in: np.ndarray,
    l1_in_bn: np.ndarray,
    l1_out: np.ndarray,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """attributes.csv rows (one per unit), plus the (C, K) class means and correlations."""
    mu = class_means(stats)
    si, selective = selectivity(mu)
    rho = class_correlation(stats)
    undefined = np.isnan(rho).all(axis=1)
    correlated = np.where(undefined, -1, np.nanargmax(np.where(undefined[:, None], 0, rho), 1))
    with np.errstate(invalid="ignore"):
        best_rho = np.where(undefined, np.nan, np.nanmax(np.where(undefined[:, None], 0, rho), 1))
    mean = stats.sum_a / stats.count
    table = pd.DataFrame(
        {
            "unit": np.arange(len(mean)),
            "l1_in": l1_in,
            "l1_in_bn": l1_in_bn,
            "l1_out": l1_out,
            "selectivity": si,
            "selective_class": [classes[k] for k in selective],
            "class_correlation": best_rho,
            "correlated_class": [classes[k] if k >= 0 else "" for k in correlated],
            "mean_activation": mean,
            "active_fraction": stats.active / stats.count,
            "activation_variance": np.maximum(stats.sum_a2 / stats.count - mean**2, 0.0),
        }
    )
    return table, mu, rho
