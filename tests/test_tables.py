"""units.csv joins, comparison rows and the generated summary, on small hand-made tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from unitablation.summary import cumulative_medians, summary_markdown
from unitablation.tables import comparison_row, overall_accuracy, unit_table

CLASSES = ["a", "b", "c", "d", "e", "f"]
IDENTITY = {"model": "plain", "layer": "features.relu5", "basis": "unit"}


def drops_table(units: list[int]) -> pd.DataFrame:
    """A drops.csv with the merge's columns, values that identify the unit."""
    return pd.DataFrame(
        {
            "unit": units,
            "overall_drop": [0.1 * u for u in units],
            "max_class_drop": [10.0 + u for u in units],
            "most_hurt_class": ["c" for _ in units],
            "most_hurt_class_index": [2 for _ in units],
            "n_tied": 1,
            "top5_mean_drop": 1.0,
            "overall_prob_drop": 0.0,
            "near_ties": 0,
            "method": "linear",
        }
    )


def test_unit_table_joins_by_unit_and_orders_hurt_classes() -> None:
    drops = drops_table([1, 0])  # out of order on purpose
    class_drops = pd.DataFrame(
        [[0, 0, 5, 9, 9, 1, 0], [1, 2, 0, 8, 8, 8, 8]], columns=["unit", *CLASSES]
    )
    # rows follow drops' unit order (1, 0); unit 1: ties between c, d, e, f at 8 -> by prob drop
    prob = np.zeros((2, 6))
    prob[0, [2, 3, 4, 5]] = [0.1, 0.4, 0.3, 0.2]
    prob[1, [3, 4]] = [0.1, 0.2]  # unit 0: c and d tie at 9; d has the larger prob drop
    attributes = pd.DataFrame({"unit": [0, 1], "selectivity": [0.5, 0.7], "selective_class": "b"})
    concepts = pd.DataFrame({"unit": [1, 0], "iou": [0.2, 0.1], "concept": ["red", "box"]})
    table = unit_table(drops, class_drops, prob, attributes, concepts, IDENTITY)
    assert list(table.columns[:4]) == ["model", "layer", "basis", "unit"]
    assert "method" not in table.columns
    assert table["unit"].tolist() == [0, 1]
    assert table.loc[0, "top5_hurt_classes"] == "d;c;b;e;a"  # a, f tie at 0: lower index
    assert table.loc[1, "top5_hurt_classes"] == "d;e;f;c;a"
    assert table.loc[1, "selectivity"] == 0.7 and table.loc[1, "concept"] == "red"
    assert table.loc[0, "max_class_drop"] == 10.0 and table.loc[1, "overall_drop"] == 0.1
    with pytest.raises(ValueError, match="concepts covers other units"):
        unit_table(drops, class_drops, prob, attributes, concepts.iloc[:1], IDENTITY)


def test_comparison_row_summarises_units_and_statistics() -> None:
    units = pd.DataFrame(
        {
            "overall_drop": [0.0, 0.5, 1.0, 2.5],
            "max_class_drop": [2.0, 10.0, 12.0, 40.0],
            "selectivity": [0.1, 0.2, 0.3, 0.4],
            "iou": [0.01, 0.05, 0.02, 0.08],
            "is_detector": [False, True, False, True],
        }
    )
    correlations = pd.DataFrame(
        {"attribute": ["selectivity"], "target": ["max_class_drop"], "spearman": [0.8]}
    )
    prediction = pd.DataFrame(
        {
            "attribute": ["selective_class", "selective_class"],
            "unit_set": ["hurting", "all"],
            "top1_hit_rate": [0.25, 0.5],
            "top5_hit_rate": [0.75, 1.0],
            "chance_top1": [1 / 6] * 2,
            "chance_top5": [5 / 6] * 2,
            "n_units": [4, 6],
        }
    )
    concentration = pd.DataFrame(
        {"n_lost": [0, 3, 5, 9], "concentrated": [False, True, False, True]}
    )
    row = comparison_row(
        units, correlations, prediction, 91.5, IDENTITY, concentration=concentration
    )
    assert row["n_units"] == 4 and row["baseline_accuracy"] == 91.5
    assert row["max_class_drop_mean"] == pytest.approx(16.0)
    assert row["max_class_drop_median"] == pytest.approx(11.0)
    assert row["overall_drop_max"] == 2.5
    assert row["units_hurting_a_class_10"] == 3
    assert row["n_detectors"] == 2 and row["iou_mean"] == pytest.approx(0.04)
    assert row["spearman_selectivity_max_class_drop"] == 0.8
    assert row["top1_selective_class"] == 0.25 and row["top5_selective_class"] == 0.75
    assert row["n_selective_class"] == 4 and row["n_hurting_units"] == 4
    assert row["top1_selective_class_all"] == 0.5 and row["n_selective_class_all"] == 6
    assert (row["n_units_losing"], row["n_concentrated"]) == (3, 2)
    assert row["concentrated_fraction"] == pytest.approx(2 / 3)
    assert "n_units_losing" not in comparison_row(units, correlations, prediction, 91.5, IDENTITY)
    baseline = pd.DataFrame(
        {"class": ["a", "b", "overall"], "n_images": [10, 30, 40], "n_correct": [5, 30, 35]}
    )
    assert overall_accuracy(baseline) == pytest.approx(87.5)


def comparison_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """variants and rotation tables with distinctive values."""
    rows = []
    for m, model in enumerate(("plain", "batchnorm")):
        for depth, layer in enumerate(("features.relu3", "features.relu5")):
            for b, basis in enumerate(("unit", "rot1", "rot2")):
                rows.append(
                    {
                        "model": model,
                        "layer": layer,
                        "basis": basis,
                        "baseline_accuracy": 90.25 + m,
                        "n_units": 64,
                        "overall_drop_mean": 0.011 + 0.1 * depth + 0.001 * b,
                        "overall_drop_median": 0.0,
                        "overall_drop_max": 0.67 + m + depth + 0.01 * b,
                        "max_class_drop_mean": 5.5 + m + depth - b,
                        "max_class_drop_median": 5.0,
                        "max_class_drop_max": 34.0 + 7 * m + depth - 10 * b,
                        "units_hurting_a_class_10": 11 + depth + m,
                        "selectivity_mean": 0.31 + 0.1 * m + 0.01 * b,
                        "iou_mean": 0.05,
                        "n_detectors": 20 + 5 * depth + m - 3 * b,
                        "spearman_selectivity_max_class_drop": 0.43 - 0.2 * b + 0.01 * m,
                        "spearman_selectivity_overall_drop": 0.07,
                        "spearman_iou_max_class_drop": 0.19,
                        "spearman_iou_overall_drop": -0.11,
                        "spearman_l1_in_overall_drop": 0.52,
                        "spearman_l1_in_max_class_drop": 0.33,
                        "spearman_class_correlation_overall_drop": 0.21,
                        "spearman_class_correlation_max_class_drop": 0.61,
                        "chance_top1": 1 / 12,
                        "top1_selective_class": 0.578125,
                        "top1_correlated_class": 0.640625,
                        "top1_concept_class": np.nan,
                        "n_selective_class": 40 + m,
                        "n_hurting_units": 50 + depth,
                        "n_units_losing": 50 + depth,
                        "n_concentrated": 40 - 10 * b + depth,
                    }
                )
    rotation = pd.DataFrame(rows)
    return rotation[rotation["basis"] == "unit"].reset_index(drop=True), rotation


def cumulative_table() -> pd.DataFrame:
    """Two classes, k = 1, 2, 4, top and random sets."""
    rows = []
    for c, name in enumerate(("a", "b")):
        for k in (1, 2, 4):
            for selection, scale in (("top", 10.0), ("random", 1.0)):
                rows.append(
                    {
                        "class": name,
                        "class_index": c,
                        "k": k,
                        "selection": selection,
                        "class_drop": scale * k + c,
                        "overall_drop": 0.1 * k * scale / 10 + c,
                    }
                )
    return pd.DataFrame(rows)


def test_summary_numbers_come_from_the_tables() -> None:
    variants, rotation = comparison_tables()
    cumulative = {("plain", "features.relu5"): cumulative_table()}
    text = summary_markdown(variants, rotation, cumulative)
    paragraphs = {p.split("**")[1].split(".")[0]: p for p in text.split("\n\n") if "**" in p}
    assert set(paragraphs) == {"RQ1", "RQ2", "RQ3", "RQ4", "Beyond the paper: cumulative ablation"}
    deep_plain = variants[(variants["model"] == "plain") & (variants["layer"] == "features.relu5")]
    row = deep_plain.iloc[0]
    # RQ1: the largest overall and class drop of each model, and its hurt-unit count
    assert f"more than {row['overall_drop_max']:.2f} points" in paragraphs["RQ1"]
    assert f"was {row['max_class_drop_max']:.1f} points" in paragraphs["RQ1"]
    assert f"{row['units_hurting_a_class_10']} of 64 units" in paragraphs["RQ1"]
    # the concentration counts per layer, and the verdict from their pooled fraction
    assert "features.relu3 40 of 50, features.relu5 41 of 51" in paragraphs["RQ1"]
    assert (
        "hurts mostly a few classes: 162 of 202 units that do damage (80%)" in (paragraphs["RQ1"])
    )
    # RQ2: Spearman values and hit rates of the deepest layer
    assert (
        f"class selectivity {row['spearman_selectivity_max_class_drop']:.2f}" in paragraphs["RQ2"]
    )
    assert "incoming L1 norm 0.52" in paragraphs["RQ2"] and "concept IoU -0.11" in paragraphs["RQ2"]
    assert "selective class 57.8% of 40 counted" in paragraphs["RQ2"]
    assert "(chance 8.3%)" in paragraphs["RQ2"]
    assert "lowers some class (51 of 64)" in paragraphs["RQ2"]
    assert "concept-implied class" not in paragraphs["RQ2"]  # NaN: no concept-implied classes
    # RQ3: per-variant values
    for model, accuracy in (("plain", "90.2"), ("batchnorm", "91.2")):
        assert f"`{model}` (top-1 {accuracy}%)" in paragraphs["RQ3"]
    assert "25 of 64 units concept detectors" in paragraphs["RQ3"]  # plain relu5 unit basis
    # RQ4: unit value and the range over rotated seeds
    rotated = rotation[
        (rotation["model"] == "plain")
        & (rotation["layer"] == "features.relu5")
        & (rotation["basis"] != "unit")
    ]
    low, high = rotated["max_class_drop_max"].min(), rotated["max_class_drop_max"].max()
    assert f"largest 35.0 (rotated {low:.1f} to {high:.1f})" in paragraphs["RQ4"]
    assert "detectors 25 (rotated 19 to 22)" in paragraphs["RQ4"]
    assert "2 random rotation(s)" in paragraphs["RQ4"]
    # cumulative: medians over classes at k = 4
    medians = cumulative_medians(cumulative_table(), 4)
    assert medians == pytest.approx(
        {
            "top_class_drop": 40.5,
            "top_overall_drop": 0.9,
            "random_class_drop": 4.5,
            "random_overall_drop": 0.54,
        }
    )
    beyond = paragraphs["Beyond the paper: cumulative ablation"]
    assert "by a median of 40.5 points (random 4 units: 4.5)" in beyond
    assert "fell by 0.9 points" in beyond
    assert not re.search(r"\bnan\b", text)


def test_summary_says_when_no_unit_dominates_a_class() -> None:
    """The RQ1 verdict follows the concentrated fraction, whatever the extreme drops say."""
    variants, rotation = comparison_tables()
    variants = variants.assign(n_concentrated=[20, 25, 21, 26])  # 92 of 202 concentrated
    text = summary_markdown(variants, rotation[rotation["basis"] == "unit"], {})
    assert "does not mainly hurt a few classes: only 92 of 202 units that do damage (46%)" in text
    assert "hurts mostly" not in text
    assert "No rotated basis was configured" in text
    assert "Beyond the paper" not in text


def test_summary_without_losses_or_concentration_draws_no_rq1_verdict() -> None:
    variants, rotation = comparison_tables()
    silent = summary_markdown(variants.assign(n_units_losing=0, n_concentrated=0), rotation, {})
    assert "cannot say whether damage concentrates" in silent
    old = variants.drop(columns=["n_units_losing", "n_concentrated"])
    assert "no verdict is drawn" in summary_markdown(old, rotation, {})


def test_summary_survives_an_empty_cumulative_table() -> None:
    variants, rotation = comparison_tables()
    empty = cumulative_table().iloc[:0]
    text = summary_markdown(variants, rotation, {("plain", "features.relu5"): empty})
    assert "In `plain` features.relu5 no class had ranking and measure images." in text
