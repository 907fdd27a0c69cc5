"""Analysis statistics on hand-made unit tables: every expected number worked out by hand."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from unitablation.attribute_registry import numeric_attributes
from unitablation.drops import drop_tables
from unitablation.statistics import (
    CLASS_PREDICTION_COLUMNS,
    CORRELATION_COLUMNS,
    _resampled_ranks,
    bootstrap_spearman_ci,
    class_prediction_table,
    correlation_table,
    top_classes,
)


def units_table(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    table = {"unit": np.arange(n)}
    table.update(columns)
    table.setdefault("overall_drop", np.zeros(n))
    table.setdefault("max_class_drop", np.zeros(n))
    return pd.DataFrame(table)


def row(table: pd.DataFrame, attribute: str, target: str = "overall_drop") -> pd.Series:
    selected = table[(table["attribute"] == attribute) & (table["target"] == target)]
    assert len(selected) == 1
    return selected.iloc[0]


# --- correlations -------------------------------------------------------------------------


def test_monotone_nonlinear_relation_has_spearman_one_and_pearson_below_one() -> None:
    x = np.arange(1.0, 21.0)
    y = np.exp(x / 3.0)
    table = correlation_table(units_table(iou=x, overall_drop=y), bootstrap=50)
    assert list(table.columns) == list(CORRELATION_COLUMNS)
    result = row(table, "iou")
    assert result["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert result["spearman_p"] < 1e-10
    assert result["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert result["pearson"] < 0.95
    assert result["n_units"] == 20 and result["n_excluded"] == 0
    # every resample of a monotone relation is monotone: the CI collapses onto 1
    assert result["ci_low"] == pytest.approx(1.0) and result["ci_high"] == pytest.approx(1.0)


def test_spearman_of_a_fixed_permutation_matches_the_closed_form() -> None:
    x = np.arange(10.0)
    y = np.array([2, 0, 1, 5, 3, 4, 9, 6, 8, 7], dtype=float)
    # d = y - x = 2,-1,-1,2,-1,-1,3,-1,0,-2; sum d^2 = 26; rho = 1 - 6*26 / (10 * 99)
    expected = 1 - 6 * 26 / (10 * (10**2 - 1))
    table = correlation_table(units_table(selectivity=x, max_class_drop=y), bootstrap=0)
    result = row(table, "selectivity", "max_class_drop")
    assert result["spearman"] == pytest.approx(expected, abs=1e-12)
    assert result["spearman"] == pytest.approx(0.842424242424, abs=1e-9)
    # Pearson on untied integers equals Spearman on them (ranks = values + 1)
    assert result["pearson"] == pytest.approx(expected, abs=1e-12)
    # bootstrap=0: no CI
    assert np.isnan(result["ci_low"]) and np.isnan(result["ci_high"])


def test_non_finite_rows_are_excluded_and_counted() -> None:
    # finite rows 0..9 are perfectly anti-monotone; the rows with NaN/inf would break that
    x = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, np.nan, 100, 101, np.inf], dtype=float)
    y = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 50, np.nan, np.nan, 60], dtype=float)
    y[:10] = y[:10] ** 2
    table = correlation_table(units_table(iou=x, overall_drop=y), bootstrap=20)
    result = row(table, "iou")
    assert result["n_units"] == 10 and result["n_excluded"] == 4
    assert result["spearman"] == pytest.approx(-1.0, abs=1e-12)
    assert result["pearson"] == pytest.approx(np.corrcoef(x[:10], y[:10])[0, 1], abs=1e-12)


def test_constant_or_empty_attributes_give_nan_without_warnings() -> None:
    n = 12
    units = units_table(
        selectivity=np.full(n, 3.0),
        l1_out=np.full(n, np.nan),
        iou=np.r_[np.arange(2.0), np.full(n - 2, np.nan)],  # only 2 finite rows
        overall_drop=np.arange(n, dtype=float),
        max_class_drop=np.full(n, 7.0),  # constant target
        mean_activation=np.arange(n, dtype=float),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = correlation_table(units, bootstrap=100)
    assert caught == []
    stat_columns = ["spearman", "spearman_p", "pearson", "pearson_p", "ci_low", "ci_high"]
    for attribute in ("selectivity", "l1_out", "iou"):
        for target in ("overall_drop", "max_class_drop"):
            assert row(table, attribute, target)[stat_columns].isna().all()
    assert row(table, "mean_activation", "max_class_drop")[stat_columns].isna().all()
    assert row(table, "mean_activation", "overall_drop")["spearman"] == pytest.approx(1.0)
    assert row(table, "selectivity")["n_units"] == n
    assert row(table, "l1_out")["n_units"] == 0 and row(table, "l1_out")["n_excluded"] == n
    assert row(table, "iou")["n_units"] == 2 and row(table, "iou")["n_excluded"] == n - 2


def test_missing_attributes_are_skipped_in_attribute_order() -> None:
    units = units_table(iou=np.arange(5.0), l1_in=np.arange(5.0)[::-1], overall_drop=np.arange(5.0))
    table = correlation_table(units, bootstrap=0)
    assert list(zip(table["attribute"], table["target"], strict=True)) == [
        ("l1_in", "overall_drop"),
        ("l1_in", "max_class_drop"),
        ("iou", "overall_drop"),
        ("iou", "max_class_drop"),
    ]
    assert row(table, "l1_in")["spearman"] == pytest.approx(-1.0)


def test_missing_target_is_an_error() -> None:
    with pytest.raises(ValueError, match="target"):
        correlation_table(pd.DataFrame({"iou": [1.0, 2.0, 3.0]}))


def noisy_units(n: int, noise: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return units_table(iou=x, overall_drop=x + noise * rng.normal(size=n))


def test_bootstrap_ci_contains_the_estimate_and_is_seeded() -> None:
    units = noisy_units(80, noise=0.3)
    first = row(correlation_table(units, seed=0), "iou")
    again = row(correlation_table(units, seed=0), "iou")
    other = row(correlation_table(units, seed=1), "iou")
    assert first["spearman"] > 0.9
    assert first["ci_low"] < first["spearman"] < first["ci_high"] <= 1.0
    assert (first["ci_low"], first["ci_high"]) == (again["ci_low"], again["ci_high"])
    assert (first["ci_low"], first["ci_high"]) != (other["ci_low"], other["ci_high"])
    # the point estimates do not depend on the seed
    assert first["spearman"] == other["spearman"]


def test_bootstrap_does_not_depend_on_which_other_attributes_are_present() -> None:
    units = noisy_units(40, noise=1.0)
    units["selectivity"] = -units["iou"]
    alone = row(correlation_table(units, attributes=["iou"]), "iou")
    together = row(correlation_table(units, attributes=["selectivity", "iou"]), "iou")
    assert (alone["ci_low"], alone["ci_high"]) == (together["ci_low"], together["ci_high"])


def test_ci_width_shrinks_with_more_units() -> None:
    small = row(correlation_table(noisy_units(30, noise=1.0)), "iou")
    large = row(correlation_table(noisy_units(1000, noise=1.0)), "iou")
    small_width = small["ci_high"] - small["ci_low"]
    large_width = large["ci_high"] - large["ci_low"]
    assert large_width < small_width / 3  # width ~ 1/sqrt(n): sqrt(1000/30) = 5.8


def test_vectorised_bootstrap_matches_a_loop_over_resamples_with_ties() -> None:
    rng = np.random.default_rng(3)
    x = np.r_[np.zeros(8), 1.0, 2.0]  # a resample of only zeros is constant (p = 0.8**10)
    y = x + rng.integers(0, 3, size=10)  # ties in y too
    low, high = bootstrap_spearman_ci(x, y, 200, np.random.default_rng(7), confidence=0.9)
    draw = np.random.default_rng(7).integers(0, 10, size=(200, 10))
    reference = []
    for index in draw:
        if np.ptp(x[index]) > 0 and np.ptp(y[index]) > 0:
            reference.append(stats.spearmanr(x[index], y[index]).statistic)
    assert 150 < len(reference) < 200  # some resamples are constant and dropped
    assert low == pytest.approx(np.quantile(reference, 0.05), abs=1e-12)
    assert high == pytest.approx(np.quantile(reference, 0.95), abs=1e-12)


def test_correlation_table_seed_is_keyed_by_attribute_and_target_names() -> None:
    units = noisy_units(25, noise=0.5)
    result = row(correlation_table(units, bootstrap=300, seed=5), "iou")
    rng = np.random.default_rng([5, zlib.crc32(b"iou"), zlib.crc32(b"overall_drop")])
    x, y = units["iou"].to_numpy(), units["overall_drop"].to_numpy()
    draws = rng.integers(0, 25, size=(300, 25))
    reference = [stats.spearmanr(x[index], y[index]).statistic for index in draws]
    assert result["ci_low"] == pytest.approx(np.quantile(reference, 0.025), abs=1e-12)
    assert result["ci_high"] == pytest.approx(np.quantile(reference, 0.975), abs=1e-12)


def test_full_size_table_bootstraps_without_a_per_resample_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """512 units x 1000 resamples: one scipy Spearman call per row, none per resample.

    What keeps the table fast is that the resamples are ranked and correlated as arrays; the
    time itself is measured by benchmarks/correlations.py, not asserted here.
    """
    rng = np.random.default_rng(0)
    n = 512
    units = units_table(
        **{name: rng.normal(size=n) for name in numeric_attributes()},
        overall_drop=rng.normal(size=n),
        max_class_drop=rng.normal(size=n),
    )
    calls: list[int] = []
    spearmanr = stats.spearmanr

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(len(args[0]))
        return spearmanr(*args, **kwargs)

    monkeypatch.setattr(stats, "spearmanr", counted)  # correlation_table imports stats late
    table = correlation_table(units, bootstrap=1000)
    rows = 2 * len(numeric_attributes())  # every (attribute, target)
    assert len(table) == rows and table["ci_low"].notna().all()
    assert calls == [n] * rows  # the point estimates only
    draws = rng.integers(0, n, size=(1000, n))
    x = units["iou"].to_numpy()
    assert np.array_equal(_resampled_ranks(x, draws), stats.rankdata(x[draws], axis=1))


# --- class prediction ---------------------------------------------------------------------


def class_units() -> pd.DataFrame:
    # 10 counted units: top-1 hits at units 0-3 (4/10); top-5 hits at units 0-6 (7/10);
    # unit 10 has no attribute class, unit 11 has no most-hurt class: both excluded.
    # Units 2, 5 and 8 change no class (M_u = 0): the hurting set counts 0, 1, 3, 4, 6, 7, 9,
    # with top-1 hits 0, 1, 3 (3/7) and top-5 hits 0, 1, 3, 4, 6 (5/7).
    return pd.DataFrame(
        {
            "unit": np.arange(12),
            "max_class_drop": [2.0, 4.0, 0.0, 6.0, 2.0, 0.0, 8.0, 2.0, 1e-16, 2.0, 2.0, 2.0],
            "most_hurt_class": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "a", np.nan],
            "top5_hurt_classes": [
                "a;b;c",
                "b",
                "c;a",
                "d;e;f;g;h",
                "e;x",
                "f;y;z",
                "g;h;i;j;k",
                "h",
                "i;j",
                np.nan,
                "a",
                "a",
            ],
            "selective_class": ["a", "b", "c", "d", "x", "z", "k", "a", "b", "c", "", "a"],
            "outgoing_class": [np.nan] * 12,
        }
    )


def test_class_prediction_hit_rates_by_hand() -> None:
    table = class_prediction_table(class_units(), n_classes=20, permutations=200)
    assert list(table.columns) == list(CLASS_PREDICTION_COLUMNS)
    assert list(table["attribute"]) == ["selective_class"] * 2 + ["outgoing_class"] * 2
    assert list(table["unit_set"]) == ["hurting", "all"] * 2
    hurting = table.iloc[0]
    assert hurting["n_units"] == 7 and hurting["n_excluded"] == 2
    assert hurting["top1_hit_rate"] == pytest.approx(3 / 7)
    assert hurting["top5_hit_rate"] == pytest.approx(5 / 7)
    selective = table.iloc[1]
    assert selective["n_units"] == 10 and selective["n_excluded"] == 2
    assert selective["top1_hit_rate"] == pytest.approx(0.4)
    assert selective["top5_hit_rate"] == pytest.approx(0.7)
    assert selective["chance_top1"] == pytest.approx(1 / 20)
    assert selective["chance_top5"] == pytest.approx(5 / 20)
    assert 0.0 <= selective["permutation_top1"] < 0.4
    assert 0.0 < selective["permutation_p"] <= 1.0
    assert (table["n_dead"] == 0).all() and (table["n_constant"] == 0).all()
    empty = table.iloc[3]
    assert empty["n_units"] == 0 and empty["n_excluded"] == 12
    assert table.iloc[2]["n_units"] == 0 and table.iloc[2]["n_excluded"] == 9
    assert np.isnan(empty[["top1_hit_rate", "top5_hit_rate", "permutation_p"]].astype(float)).all()


def test_constant_units_are_left_out_and_counted_in_each_unit_set() -> None:
    units = class_units().assign(constant=[False, True] + [False] * 10)
    units = units.assign(dead=[True] + [False] * 11)
    table = class_prediction_table(units, ["selective_class"], n_classes=20, permutations=0)
    hurting, every = table.iloc[0], table.iloc[1]
    # units 0 (dead) and 1 (constant) were top-1 hits: 1 of 5 hurting, 2 of 8 over all
    assert (hurting["n_units"], hurting["n_dead"], hurting["n_constant"]) == (5, 1, 1)
    assert hurting["top1_hit_rate"] == pytest.approx(1 / 5)
    assert (every["n_units"], every["n_excluded"]) == (8, 4)
    assert every["top1_hit_rate"] == pytest.approx(2 / 8)


def test_chance_with_fewer_than_five_classes() -> None:
    table = class_prediction_table(class_units(), ["selective_class"], n_classes=3)
    assert table.iloc[0]["chance_top1"] == pytest.approx(1 / 3)
    assert table.iloc[0]["chance_top5"] == pytest.approx(1.0)


def test_permutation_p_is_small_when_every_unit_hits() -> None:
    names = [f"class{i:03d}" for i in range(100)]
    units = pd.DataFrame(
        {
            "unit": np.arange(100),
            "most_hurt_class": names,
            "top5_hurt_classes": names,
            "concept_class": names,
            "max_class_drop": np.full(100, 2.0),
        }
    )
    result = class_prediction_table(units, n_classes=100, permutations=1000).iloc[0]
    assert result["top1_hit_rate"] == 1.0 and result["top5_hit_rate"] == 1.0
    assert result["permutation_p"] == pytest.approx(1 / 1001)
    # a random permutation has one fixed point on average: 1/100 of the units
    assert result["permutation_top1"] == pytest.approx(0.01, abs=0.003)
    assert result["permutation_top5"] == pytest.approx(0.01, abs=0.003)


def test_permutation_p_is_large_when_classes_are_independent() -> None:
    rng = np.random.default_rng(11)
    names = np.array([f"c{i}" for i in range(5)])
    most_hurt = names[rng.integers(0, 5, size=300)]
    predicted = names[rng.integers(0, 5, size=300)]
    units = pd.DataFrame(
        {
            "unit": np.arange(300),
            "most_hurt_class": most_hurt,
            "top5_hurt_classes": most_hurt,
            "correlated_class": predicted,
            "max_class_drop": np.full(300, 2.0),
        }
    )
    first = class_prediction_table(units, n_classes=5, seed=0).iloc[0]
    again = class_prediction_table(units, n_classes=5, seed=0).iloc[0]
    assert first["permutation_p"] > 0.05
    assert first["top1_hit_rate"] == pytest.approx(np.mean(most_hurt == predicted))
    assert first["permutation_top1"] == pytest.approx(0.2, abs=0.03)
    assert first.equals(again)


# --- top classes --------------------------------------------------------------------------


def test_top_classes_break_ties_by_probability_drop_then_index() -> None:
    classes = ["a", "b", "c", "d", "e", "f"]
    drops = np.array(
        [
            [5.0, 10.0, 10.0, 3.0, 10.0, np.nan],
            [1.0, 2.0, np.nan, np.nan, np.nan, 2.0 + 1e-12],  # near tie within 1e-9
        ]
    )
    probs = np.array(
        [
            [0.0, 0.1, 0.3, 0.0, 0.1, 0.9],
            [0.0, 0.2, 0.0, 0.0, 0.0, 0.1],
        ]
    )
    # row 0: c (10, 0.3), then b and e (10, 0.1) by index, then a, d; f has no images
    # row 1: b and f tie within 1e-9, b has the larger probability drop; only 3 classes exist
    assert top_classes(drops, probs, classes) == ["c;b;e;a;d", "b;f;a"]
    assert top_classes(drops, probs, classes, k=2) == ["c;b", "b;f"]


def test_top_classes_start_with_the_most_hurt_class_of_drop_tables() -> None:
    rng = np.random.default_rng(2)
    classes = [f"k{i}" for i in range(6)]
    sizes = np.array([4, 4, 4, 2, 2, 0])
    base = np.array([4, 3, 4, 2, 1, 0])
    base_prob = base * 0.9
    correct = np.minimum(rng.integers(0, 5, size=(40, 6)), base)  # many tied drops
    prob = np.minimum(correct * rng.choice([0.7, 0.9], size=(40, 6)), base_prob)
    result = drop_tables(np.arange(40), correct, prob, base, base_prob, sizes, classes)
    class_drops = result.class_drops[classes].to_numpy()
    listed = top_classes(class_drops, result.class_prob_drops, classes)
    assert [names.split(";")[0] for names in listed] == list(result.drops["most_hurt_class"])
    assert all(len(names.split(";")) == 5 and "k5" not in names for names in listed)
