"""Drop tables from hand-made counts: every number worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from unitablation.drops import DropTables, drop_tables

CLASSES = ["a", "b", "c", "d"]
SIZES = np.array([10, 5, 4, 0])  # class d has no eval images
BASE = np.array([8, 5, 2, 0])  # baseline correct: 80%, 100%, 50%; overall 15/19
BASE_PROB = np.array([7.0, 4.0, 2.0, 0.0])


def tables(correct, prob=None, thresholds=(5, 10, 20)):
    correct = np.array(correct)
    prob = np.array(prob) if prob is not None else np.tile(BASE_PROB, (len(correct), 1))
    return drop_tables(
        np.arange(len(correct)),
        correct,
        prob,
        BASE,
        BASE_PROB,
        SIZES,
        CLASSES,
        thresholds=thresholds,
    )


def test_overall_and_class_drops_by_hand() -> None:
    result = tables([[8, 4, 2, 0], [6, 5, 1, 0]])
    drops = result.drops
    # unit 0: class b loses 1 of 5 (20 points); overall 1/19 images = 5.263 points
    assert drops.loc[0, "overall_drop"] == pytest.approx(100 / 19)
    assert drops.loc[0, "max_class_drop"] == pytest.approx(20.0)
    assert drops.loc[0, "most_hurt_class"] == "b" and drops.loc[0, "n_tied"] == 1
    # unit 1: a loses 2/10 = 20, c loses 1/4 = 25: c is most hurt
    assert drops.loc[1, "max_class_drop"] == pytest.approx(25.0)
    assert drops.loc[1, "most_hurt_class"] == "c" and drops.loc[1, "most_hurt_class_index"] == 2
    assert drops.loc[1, "n_classes_hurt_20"] == 2 and drops.loc[1, "n_classes_hurt_10"] == 2
    assert drops.loc[0, "n_classes_hurt_5"] == 1 and drops.loc[0, "n_classes_hurt_20"] == 1
    # top-5 mean over the three classes that have images: (20 + 0 + 25) / 3
    assert drops.loc[1, "top5_mean_drop"] == pytest.approx(45 / 3)
    class_drops = result.class_drops
    assert list(class_drops.columns) == ["unit", *CLASSES]
    assert class_drops.loc[1, "a"] == pytest.approx(20.0) and np.isnan(class_drops.loc[1, "d"])


def test_ties_are_broken_by_the_probability_drop_and_counted() -> None:
    # unit 0: a and b both drop 20 points; b's true-class probability drops more
    result = tables([[6, 4, 2, 0]], prob=[[6.5, 3.0, 2.0, 0.0]])
    row = result.drops.loc[0]
    assert row["n_tied"] == 2 and row["most_hurt_class"] == "b"
    np.testing.assert_allclose(result.class_prob_drops[0, :3], [0.05, 0.2, 0.0])
    # same accuracy drops, now a loses more probability
    result = tables([[6, 4, 2, 0]], prob=[[5.0, 3.8, 2.0, 0.0]])
    assert result.drops.loc[0, "most_hurt_class"] == "a"


def test_a_unit_that_helps_gives_negative_drops() -> None:
    result = tables([[9, 5, 3, 0]])
    row = result.drops.loc[0]
    assert row["overall_drop"] == pytest.approx(-200 / 19)
    assert row["max_class_drop"] == pytest.approx(0.0) and row["most_hurt_class"] == "b"
    assert row["n_classes_hurt_5"] == 0


def test_units_are_sorted_and_duplicates_rejected() -> None:
    correct = np.array([[8, 5, 2, 0], [7, 5, 2, 0]])
    result = drop_tables(
        np.array([5, 2]), correct, np.tile(BASE_PROB, (2, 1)), BASE, BASE_PROB, SIZES, CLASSES
    )
    assert result.drops["unit"].tolist() == [2, 5]
    assert result.drops["overall_drop"].tolist() == pytest.approx([100 / 19, 0.0])
    with pytest.raises(ValueError, match="more than one shard"):
        drop_tables(
            np.array([1, 1]), correct, np.tile(BASE_PROB, (2, 1)), BASE, BASE_PROB, SIZES, CLASSES
        )


def test_no_class_with_eval_images_is_rejected() -> None:
    zeros = np.zeros((1, 2))
    with pytest.raises(ValueError, match="no class has eval images"):
        drop_tables(np.arange(1), zeros, zeros, np.zeros(2), np.zeros(2), np.zeros(2), ["a", "b"])


def test_gross_losses_become_n_lost_per_unit_in_unit_order() -> None:
    """n_lost sums a unit's correct -> wrong images over classes; it can exceed the net loss."""
    correct = np.array([[8, 5, 2, 0], [7, 5, 2, 0]])
    # unit 5 loses 2 images of a and gains 2 back (net 0); unit 2 loses 1 of a
    lost = np.array([[2, 0, 0, 0], [1, 0, 0, 0]])

    def tables(lost: np.ndarray) -> DropTables:
        probs = np.tile(BASE_PROB, (2, 1))
        return drop_tables(
            np.array([5, 2]), correct, probs, BASE, BASE_PROB, SIZES, CLASSES, lost=lost
        )

    result = tables(lost)
    assert result.drops["unit"].tolist() == [2, 5]
    assert result.drops["n_lost"].tolist() == [1, 2]
    assert result.drops["overall_drop"].tolist() == pytest.approx([100 / 19, 0.0])
    with pytest.raises(ValueError, match=r"lost has shape \(2, 3\), expected \(2, 4\)"):
        tables(lost[:, :3])
