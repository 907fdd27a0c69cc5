"""What an ablation run counts, per unit (or set) and class: numpy only, so that the rules that
merge and read counts need no torch import."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class AblationCounts:
    """Per unit and class, what the network still gets right with that unit ablated."""

    units: np.ndarray  # (U,) unit indices
    correct: np.ndarray  # (U, K) images of class k predicted k with the unit ablated
    prob_sum: np.ndarray  # (U, K) sum over class-k images of the true-class probability
    near_ties: np.ndarray  # (U,) (unit, image) pairs whose top-2 logits differ by < tie_margin
    lost: np.ndarray  # (U, K) class-k images correct without ablation, wrong with it (gross)
    baseline_correct: np.ndarray  # (K,) the same count without ablation, through the same path
    baseline_prob_sum: np.ndarray  # (K,)
    baseline_predictions: np.ndarray  # (N,) top-1 class of each image, same path, no ablation
    class_sizes: np.ndarray  # (K,) images per class
    method: str

    def merge(self, other: AblationCounts) -> AblationCounts:
        """Stack the counts of two disjoint unit sets evaluated on the same images."""
        if not np.array_equal(self.class_sizes, other.class_sizes):
            raise ValueError("counts come from different image sets")
        if not np.array_equal(self.baseline_predictions, other.baseline_predictions):
            raise ValueError("counts come from different baselines (unablated predictions differ)")
        return AblationCounts(
            units=np.concatenate([self.units, other.units]),
            correct=np.concatenate([self.correct, other.correct]),
            prob_sum=np.concatenate([self.prob_sum, other.prob_sum]),
            near_ties=np.concatenate([self.near_ties, other.near_ties]),
            lost=np.concatenate([self.lost, other.lost]),
            baseline_correct=self.baseline_correct,
            baseline_prob_sum=self.baseline_prob_sum,
            baseline_predictions=self.baseline_predictions,
            class_sizes=self.class_sizes,
            method=self.method,
        )


@dataclass(frozen=True)
class BaselineAgreement:
    """How the same-path baseline's top-1 predictions compare with the stored full network's."""

    differing: int  # eval images whose two predictions differ
    beyond_ties: int  # of those, images whose stored top-2 logit margin is at least tie_margin


def compare_baseline(
    predictions: np.ndarray, stored_logits: np.ndarray, tie_margin: float
) -> BaselineAgreement:
    """Count images where the engine's unablated prediction differs from the stored logits'."""
    stored_logits = np.asarray(stored_logits, dtype=np.float32)
    if len(predictions) != len(stored_logits):
        raise ValueError(
            f"baseline has {len(predictions)} predictions, the store {len(stored_logits)} logits"
        )
    differs = np.asarray(predictions) != stored_logits.argmax(1)
    if stored_logits.shape[1] > 1:
        top = -np.sort(-stored_logits, axis=1)[:, :2]
        tied = (top[:, 0] - top[:, 1]) < tie_margin
    else:
        tied = np.zeros(len(stored_logits), dtype=bool)
    return BaselineAgreement(int(differs.sum()), int((differs & ~tied).sum()))


def check_baseline(agreement: BaselineAgreement, model: str, layer: str, source: str) -> None:
    """Fail when the same-path baseline disagrees with the stored network beyond float ties.

    `source` says what the path read (float32 maps or images): a full-precision path must
    reproduce the network, so any disagreement outside near-ties is a bug, not rounding.
    """
    if agreement.beyond_ties:
        raise ValueError(
            f"model {model!r}, layer {layer}: the unablated network through the ablation path "
            f"({source}) predicts {agreement.beyond_ties} eval image(s) differently from the "
            "stored full-network logits, beyond float ties; the drops would not be exact"
        )


@dataclass
class SetCounts:
    """Per unit set and class, what the network still gets right with the whole set ablated."""

    correct: np.ndarray  # (S, K) images of class k predicted k with set s ablated
    near_ties: np.ndarray  # (S,) images whose top-2 logits differ by < tie_margin
    baseline_correct: np.ndarray  # (K,) the same count without ablation, through the same path
    class_sizes: np.ndarray  # (K,) images per class
    method: str

    def take(self, rows: Sequence[int]) -> SetCounts:
        """The counts of the given sets (rows may repeat)."""
        rows = np.asarray(rows, dtype=np.int64)
        return SetCounts(
            correct=self.correct[rows],
            near_ties=self.near_ties[rows],
            baseline_correct=self.baseline_correct,
            class_sizes=self.class_sizes,
            method=self.method,
        )
