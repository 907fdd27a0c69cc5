"""Baseline accuracy table against hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest

from unitablation.accuracy import class_accuracy_table


def one_hot_logits(predictions, classes):
    logits = np.zeros((len(predictions), classes), dtype=np.float32)
    logits[np.arange(len(predictions)), predictions] = 1.0
    return logits


def test_per_class_and_overall_accuracy_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = [0, 0, 1, 1, 0, 0]  # class 0: 2/3, class 1: 1/2, class 2: 0/1; overall 3/6
    table = class_accuracy_table(labels, one_hot_logits(predictions, 4), ["a", "b", "c", "d"])
    assert list(table["class"]) == ["a", "b", "c", "d", "overall"]
    assert table["n_correct"].tolist() == [2, 1, 0, 0, 3]
    np.testing.assert_allclose(table["accuracy"][:3], [200 / 3, 50.0, 0.0])
    assert np.isnan(table["accuracy"][3]) and table["n_images"][3] == 0  # class without images
    assert table["accuracy"].iloc[-1] == pytest.approx(50.0)
    assert table["class_index"].iloc[-1] == -1


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 classes"):
        class_accuracy_table(np.array([0, 1]), np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="3 labels but 2 logit rows"):
        class_accuracy_table(np.array([0, 1, 1]), np.zeros((2, 2)), ["a", "b"])
