"""RQ1 concentration test: is a unit's damage concentrated on few classes, beyond chance?

For each unit, n_u eval images turn from correct to wrong when it is ablated (gross losses where
the shards record them, else the net count that D_u corresponds to). The null places the same
n_u losses on correctly classified eval images drawn uniformly at random without replacement
(a multivariate hypergeometric draw over the classes' baseline-correct counts); its statistic
is the largest class drop in points, max_c 100 * losses_c / |V_c|. The unit's p-value is
p_u = (1 + #draws >= M_u) / (1 + draws); its damage is concentrated when p_u < ALPHA.

The null of a unit depends only on n_u, so draws come from a generator keyed by the seed and
n_u: a unit's p-value does not depend on which other units the table holds.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from .degenerate import flag

#: A unit's damage is concentrated when its p-value is below this.
ALPHA = 0.05
#: Drops (points) closer than this are equal: the null statistic and M_u are both computed in
#: points from integer counts, so only float rounding separates equal values.
TOLERANCE = 1e-9
#: Below this many correctly classified eval images the null samples losses image by image.
COUNT_METHOD_LIMIT = 10**7

CONCENTRATION_COLUMNS: tuple[str, ...] = (
    "unit",
    "n_lost",
    "lost_source",
    "max_class_drop",
    "null_mean_max_class_drop",
    "p_value",
    "concentrated",
)


def _rng(seed: int, n_lost: int) -> np.random.Generator:
    """The generator of the null for n_lost losses, keyed by the seed and n_lost only."""
    return np.random.default_rng([seed, zlib.crc32(b"concentration"), n_lost])


def null_max_class_drops(
    n_lost: int,
    baseline_correct: np.ndarray,
    class_sizes: np.ndarray,
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(draws,) largest class drop in points when n_lost losses fall on random correct images."""
    present = class_sizes > 0
    # "count" samples image by image: far faster than "marginals" (a pass over every class
    # per draw) when classes are many; its scratch memory grows with the image count.
    method = "count" if baseline_correct.sum() < COUNT_METHOD_LIMIT else "marginals"
    losses = rng.multivariate_hypergeometric(baseline_correct, n_lost, size=draws, method=method)
    return (100.0 * losses[:, present] / class_sizes[present]).max(axis=1)


def observed_max_class_drops(
    correct: np.ndarray, baseline_correct: np.ndarray, class_sizes: np.ndarray
) -> np.ndarray:
    """(U,) M_u in points from the counts, computed like the null statistic (same rounding)."""
    present = class_sizes > 0
    net = baseline_correct[None, present] - correct[:, present]
    return (100.0 * net / class_sizes[present]).max(axis=1)


def _checked_counts(
    correct: np.ndarray,
    baseline_correct: np.ndarray,
    class_sizes: np.ndarray,
    lost: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The counts as int64 arrays, with shapes and ranges checked."""
    correct = np.asarray(correct, dtype=np.int64)
    baseline_correct = np.asarray(baseline_correct, dtype=np.int64)
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    k = len(class_sizes)
    if correct.ndim != 2 or correct.shape[1] != k or baseline_correct.shape != (k,):
        raise ValueError(
            f"correct {correct.shape} and baseline_correct {baseline_correct.shape} do not fit "
            f"{k} classes"
        )
    if not (class_sizes > 0).any():
        raise ValueError("no class has eval images")
    if (baseline_correct < 0).any() or (baseline_correct > class_sizes).any():
        raise ValueError("baseline_correct must lie between 0 and the class sizes")
    if lost is not None:
        lost = np.asarray(lost, dtype=np.int64)
        if lost.shape != correct.shape:
            raise ValueError(f"lost has shape {lost.shape}, correct {correct.shape}")
        if (lost < 0).any() or (lost > baseline_correct[None, :]).any():
            raise ValueError("lost must lie between 0 and each class's baseline-correct count")
    return correct, baseline_correct, class_sizes, lost


def concentration_table(
    units: np.ndarray,
    correct: np.ndarray,
    baseline_correct: np.ndarray,
    class_sizes: np.ndarray,
    lost: np.ndarray | None = None,
    *,
    draws: int,
    seed: int,
) -> pd.DataFrame:
    """One row per unit: n_u, its source, M_u, the null's mean max class drop, p_u, concentrated.

    `correct` (U, K) counts each class's correct images with the unit ablated; `lost` (U, K),
    when given, the gross losses (images turned from correct to wrong). Without it n_u is the
    net loss max(0, sum_c (baseline_correct_c - correct_uc)) and lost_source says "net". Units
    with n_u = 0 have no p-value (NaN) and are not concentrated.
    """
    if draws <= 0:
        raise ValueError(f"draws must be positive, got {draws}")
    correct, baseline_correct, class_sizes, lost = _checked_counts(
        correct, baseline_correct, class_sizes, lost
    )
    if lost is None:
        n_lost = np.maximum(0, (baseline_correct[None, :] - correct).sum(axis=1))
        source = "net"
    else:
        n_lost = lost.sum(axis=1)
        source = "gross"
    observed = observed_max_class_drops(correct, baseline_correct, class_sizes)
    p_value = np.full(len(correct), np.nan)
    null_mean = np.full(len(correct), np.nan)
    for n in np.unique(n_lost[n_lost > 0]):
        null = null_max_class_drops(int(n), baseline_correct, class_sizes, draws, _rng(seed, n))
        rows = np.flatnonzero(n_lost == n)
        at_least = (null[None, :] >= observed[rows, None] - TOLERANCE).sum(axis=1)
        p_value[rows] = (1 + at_least) / (1 + draws)
        null_mean[rows] = null.mean()
    return pd.DataFrame(
        {
            "unit": np.asarray(units),
            "n_lost": n_lost,
            "lost_source": source,
            "max_class_drop": observed,
            "null_mean_max_class_drop": null_mean,
            "p_value": p_value,
            "concentrated": np.nan_to_num(p_value, nan=1.0) < ALPHA,
        },
        columns=list(CONCENTRATION_COLUMNS),
    ).sort_values("unit", kind="stable", ignore_index=True)


def concentration_summary(table: pd.DataFrame) -> dict[str, float | int]:
    """Units with n_u > 0, how many of them are concentrated, and the fraction (NaN if none)."""
    losing = pd.to_numeric(table["n_lost"], errors="coerce").fillna(0) > 0
    concentrated = table["concentrated"].map(flag).astype(bool) & losing
    n_losing, n_concentrated = int(losing.sum()), int(concentrated.sum())
    return {
        "n_units_losing": n_losing,
        "n_concentrated": n_concentrated,
        "concentrated_fraction": n_concentrated / n_losing if n_losing else float("nan"),
    }
