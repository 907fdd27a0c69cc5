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

    A class with no eval images gets NaN accuracy and n_images 0, so the table says so;
    `n_predicted` counts the eval images the model predicts as the class (top-1), so a class the
    model never predicts shows 0 there (its accuracy is then 0 too). The overall row's
    n_predicted is the number of images.
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
    predictions = np.argmax(logits, axis=1)
    correct = predictions == labels
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
            "n_predicted": np.bincount(predictions, minlength=len(classes)),
        }
    )
    overall = pd.DataFrame(
        {
            "class_index": [-1],
            "class": [OVERALL],
            "n_images": [int(labels.size)],
            "n_correct": [int(correct.sum())],
            "accuracy": [100.0 * correct.mean() if labels.size else np.nan],
            "n_predicted": [int(labels.size)],
        }
    )
    return pd.concat([table, overall], ignore_index=True)


def never_predicted(table: pd.DataFrame) -> list[str]:
    """Classes of a baseline table (class rows only) that the model predicts for no eval image.

    Empty for a table written before `n_predicted` existed.
    """
    if "n_predicted" not in table:
        return []
    rows = table[pd.to_numeric(table["class_index"], errors="coerce") >= 0]
    return [str(name) for name in rows.loc[rows["n_predicted"] == 0, "class"]]
