"""From ablation counts to drops: overall, per class, the most-hurt class (docs/definitions.md).

All accuracy drops are in percentage points (0-100); probability drops are in probability units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_THRESHOLDS = (5.0, 10.0, 20.0)
#: Class drops (points) closer than this are tied.
TIE_TOLERANCE = 1e-9
#: Mean true-class probability drops closer than this are equal when breaking a tie: a unit
#: whose ablation changes nothing (a dead unit) has drops of summation noise (~1e-16), which
#: must not pick the class.
PROB_TIE_TOLERANCE = 1e-12


@dataclass
class DropTables:
    """The merged result of one (model, layer, basis)."""

    drops: pd.DataFrame  # one row per unit
    class_drops: pd.DataFrame  # units x classes, accuracy drop in points
    class_prob_drops: np.ndarray  # (U, K) mean drop of the true-class probability over V_c


def _threshold_name(threshold: float) -> str:
    return f"n_classes_hurt_{threshold:g}".replace(".", "p")


def rank_classes(class_drops: np.ndarray, prob_drops: np.ndarray, k: int) -> np.ndarray:
    """Each unit's k most-hurt class indices (units, k), -1 where fewer classes have drops.

    Classes come in decreasing class drop; drops within TIE_TOLERANCE of the best remaining one
    are tied and broken by the larger true-class probability drop (within PROB_TIE_TOLERANCE:
    equal), then by the lower class index. Classes with a NaN drop (no eval images) are never
    ranked. The first column is c*_u, the most-hurt class.
    """
    drops = np.asarray(class_drops, dtype=np.float64)
    probs = np.asarray(prob_drops, dtype=np.float64)
    probs = np.where(np.isnan(probs), -np.inf, probs)
    available = ~np.isnan(drops)
    picks = []
    for _ in range(min(k, drops.shape[1])):
        masked = np.where(available, drops, -np.inf)
        best = masked.max(axis=1, keepdims=True)
        tied = available & np.isclose(masked, best, rtol=0, atol=TIE_TOLERANCE)
        tied_probs = np.where(tied, probs, -np.inf)
        best_prob = tied_probs.max(axis=1, keepdims=True)
        chosen = tied & (tied_probs >= best_prob - PROB_TIE_TOLERANCE)
        pick = np.where(available.any(axis=1), chosen.argmax(axis=1), -1)
        rows = np.flatnonzero(pick >= 0)
        available[rows, pick[rows]] = False
        picks.append(pick)
    return np.stack(picks, axis=1) if picks else np.empty((len(drops), 0), dtype=np.int64)


def drop_tables(
    units: np.ndarray,
    correct: np.ndarray,
    prob_sum: np.ndarray,
    baseline_correct: np.ndarray,
    baseline_prob_sum: np.ndarray,
    class_sizes: np.ndarray,
    classes: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    near_ties: np.ndarray | None = None,
    lost: np.ndarray | None = None,
) -> DropTables:
    """Compute D_u, d_uc, M_u, c*_u (ties: larger mean true-class probability drop), n_tied,
    classes hurt by at least each threshold, and the mean of the five largest class drops.

    `lost` (U, K), when given, counts per unit and class the eval images the ablation turns
    from correct to wrong (gross, unlike the net D_u); its row sums become `n_lost`.

    Classes without eval images get NaN drops and are never the most-hurt class. The most-hurt
    class is `rank_classes`' first: a unit whose ablation changes nothing (all d_uc 0, n_tied
    the number of classes) gets the lowest class index, not the class of a rounding error.
    """
    units = np.asarray(units)
    correct = np.asarray(correct, dtype=np.float64)
    sizes = np.asarray(class_sizes, dtype=np.float64)
    if correct.shape != (len(units), len(classes)) or prob_sum.shape != correct.shape:
        raise ValueError(
            f"counts have shape {correct.shape}, expected ({len(units)}, {len(classes)})"
        )
    order = np.argsort(units, kind="stable")
    units, correct, prob_sum = units[order], correct[order], np.asarray(prob_sum)[order]
    if len(np.unique(units)) != len(units):
        raise ValueError("a unit appears in more than one shard")
    present = sizes > 0
    if not present.any():
        raise ValueError("no class has eval images")
    with np.errstate(invalid="ignore", divide="ignore"):
        base_accuracy = np.where(present, 100.0 * baseline_correct / sizes, np.nan)
        class_accuracy = np.where(present, 100.0 * correct / sizes, np.nan)
        base_prob = np.where(present, baseline_prob_sum / sizes, np.nan)
        prob = np.where(present, prob_sum / sizes, np.nan)
    class_drop = base_accuracy[None, :] - class_accuracy
    prob_drop = base_prob[None, :] - prob
    total = sizes.sum()
    overall_drop = 100.0 * (np.sum(baseline_correct) - correct.sum(axis=1)) / total
    overall_prob_drop = (np.sum(baseline_prob_sum) - prob_sum.sum(axis=1)) / total

    usable = np.where(present[None, :], class_drop, -np.inf)
    max_drop = usable.max(axis=1)
    tied = np.isclose(usable, max_drop[:, None], rtol=0, atol=TIE_TOLERANCE) & present[None, :]
    n_tied = tied.sum(axis=1)
    most_hurt = rank_classes(class_drop, prob_drop, 1)[:, 0]
    finite = np.where(present[None, :], class_drop, np.nan)
    top = -np.sort(-np.nan_to_num(finite, nan=-np.inf), axis=1)[:, : min(5, int(present.sum()))]
    table = {
        "unit": units,
        "overall_drop": overall_drop,
        "max_class_drop": max_drop,
        "most_hurt_class": [classes[index] for index in most_hurt],
        "most_hurt_class_index": most_hurt,
        "n_tied": n_tied,
    }
    for threshold in thresholds:
        table[_threshold_name(threshold)] = (np.nan_to_num(finite, nan=-np.inf) >= threshold).sum(1)
    table["top5_mean_drop"] = top.mean(axis=1)
    table["overall_prob_drop"] = overall_prob_drop
    if near_ties is not None:
        table["near_ties"] = np.asarray(near_ties)[order]
    if lost is not None:
        lost = np.asarray(lost)
        if lost.shape != correct.shape:
            raise ValueError(f"lost has shape {lost.shape}, expected {correct.shape}")
        table["n_lost"] = lost[order].sum(axis=1)
    drops = pd.DataFrame(table)
    class_drops = pd.DataFrame(class_drop, columns=list(classes))
    class_drops.insert(0, "unit", units)
    return DropTables(drops=drops, class_drops=class_drops, class_prob_drops=prob_drop)
