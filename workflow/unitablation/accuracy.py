"""Baseline accuracy, overall and per class, from stored labels and logits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

OVERALL = "overall"


def class_accuracy_table(
    labels: np.ndarray, logits: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """Per-class top-1 accuracy in points (0-100), then one `overall` row (class_index -1).

    A class with no eval images gets NaN accuracy and n_images 0, so the table says so.
    """
    labels = np.asarray(labels)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels but {logits.shape[0]} logit rows")
    if logits.shape[1] != len(classes):
        raise ValueError(
            f"logits have {logits.shape[1]} columns but there are {len(classes)} classes"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError("labels outside the class range")
    correct = np.argmax(logits, axis=1) == labels
    counts = np.bincount(labels, minlength=len(classes))
    hits = np.bincount(labels, weights=correct, minlength=len(classes)).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, 100.0 * hits / counts, np.nan)
    table = pd.DataFrame(
        {
            "class_index": np.arange(len(classes)),
            "class": list(classes),
            "n_images": counts,
            "n_correct": hits,
            "accuracy": accuracy,
        }
    )
    overall = pd.DataFrame(
        {
            "class_index": [-1],
            "class": [OVERALL],
            "n_images": [int(labels.size)],
            "n_correct": [int(correct.sum())],
            "accuracy": [100.0 * correct.mean() if labels.size else np.nan],
        }
    )
    return pd.concat([table, overall], ignore_index=True)
