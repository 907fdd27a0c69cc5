"""Streamed sums of a layer's eval activations, and the per-unit quantities read from them.

Torch-free (numpy only), so the attribute registry that computes its attributes from these sums
stays importable where torch is not installed. Definitions: docs/definitions.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SELECTIVITY_EPSILON = 1e-7


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


def rotated_summaries(maps: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spatial means of max(z_j, 0) and spatial maxima of z_j for a batch of (B, C, h, w) maps.

    z_j = r_j . a at every position: the rotated units' maps. Rectified (docs/definitions.md), so
    activation-based attributes of a rotated unit read a non-negative map like a ReLU unit's.
    """
    z = np.einsum("jc,bc...->bj...", np.asarray(rotation, np.float64), maps.astype(np.float64))
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    return np.maximum(flat, 0.0).mean(axis=2), flat.max(axis=2)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _empty(channels: int, num_classes: int) -> ActivationStatistics:
    """Zero sums for `channels` units and `num_classes` classes."""
    return ActivationStatistics(
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
            stats = _empty(means.shape[1], num_classes)
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


def mean_activation(stats: ActivationStatistics) -> np.ndarray:
    """(C,) mean of a_u(x) over the eval images."""
    return stats.sum_a / stats.count


def activation_variance(stats: ActivationStatistics) -> np.ndarray:
    """(C,) population variance of a_u(x) over the eval images (rounding below 0 clipped)."""
    return np.maximum(stats.sum_a2 / stats.count - mean_activation(stats) ** 2, 0.0)


def active_fraction(stats: ActivationStatistics) -> np.ndarray:
    """(C,) fraction of eval images where the unit's spatial max is above 0."""
    return stats.active / stats.count


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


def best_correlation(rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,) largest class correlation of each unit and its class; NaN and -1 where every rho_uc
    is undefined (a constant unit)."""
    undefined = np.isnan(rho).all(axis=1)
    defined = np.where(undefined[:, None], 0, rho)
    correlated = np.where(undefined, -1, np.nanargmax(defined, 1))
    with np.errstate(invalid="ignore"):
        best = np.where(undefined, np.nan, np.nanmax(defined, 1))
    return best, correlated


def dead_units(stats: ActivationStatistics, rectified: bool) -> np.ndarray:
    """(C,) True for units never active on the eval set (spatial max <= 0 on every image) where
    maps are rectified (unit basis of a post-ReLU layer); elsewhere no unit is dead."""
    return (stats.active == 0) & rectified


def constant_units(stats: ActivationStatistics) -> np.ndarray:
    """(C,) True where a_u(x) has zero variance over the eval set (the correlation's tolerance)."""
    mean_square = stats.sum_a2 / stats.count
    variance = np.maximum(mean_square - (stats.sum_a / stats.count) ** 2, 0.0)
    return variance <= 1e-12 * np.maximum(1.0, mean_square)
