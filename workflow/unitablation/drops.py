"""From ablation counts to drops: overall, per class, and the most-hurt class (SCIENCE.md).

All accuracy drops are in percentage points (0-100); probability drops are in probability units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_THRESHOLDS = (5.0, 10.0, 20.0)
#: Mean true-class probability drops closer than this are equal when breaking a tie of M_u.
PROB_TIE_TOLERANCE = 1e-12


@dataclass
class DropTables:
    """The merged result of one (model, layer, basis)."""

    drops: pd.DataFrame  # one row per unit
    class_drops: pd.DataFrame  # units x classes, accuracy drop in points
    class_prob_drops: np.ndarray  # (U, K) mean drop of the true-class probability over V_c


def _threshold_name(threshold: float) -> str:
    return f"n_classes_hurt_{threshold:g}".replace(".", "p")


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
) -> DropTables:
    """Compute D_u, d_uc, M_u, c*_u (ties: larger mean true-class probability drop), n_tied,
    classes hurt by at least each threshold, and the mean of the five largest class drops.

    Classes without eval images get NaN drops and are never the most-hurt class. Probability
    drops within 1e-12 are equal, so a unit whose ablation changes nothing (all d_uc 0, n_tied
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
    tied = np.isclose(usable, max_drop[:, None], rtol=0, atol=1e-9) & present[None, :]
    n_tied = tied.sum(axis=1)
    tie_break = np.where(tied, np.nan_to_num(prob_drop, nan=-np.inf), -np.inf)
    # probability drops within PROB_TIE_TOLERANCE are equal: a unit whose ablation changes
    # nothing (a dead unit) has drops of summation noise (~1e-16), which must not pick the class
    best = tie_break.max(axis=1, keepdims=True)
    most_hurt = (tied & (tie_break >= best - PROB_TIE_TOLERANCE)).argmax(axis=1)  # lowest index
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
    drops = pd.DataFrame(table)
    class_drops = pd.DataFrame(class_drop, columns=list(classes))
    class_drops.insert(0, "unit", units)
    return DropTables(drops=drops, class_drops=class_drops, class_prob_drops=prob_drop)
