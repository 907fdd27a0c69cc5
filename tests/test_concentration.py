"""RQ1 concentration test: p-values against exact hypergeometric enumeration, edge cases, the
rule adapter, and the summary sentence following the data either way."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pandas as pd
import pytest

from unitablation.concentration import (
    CONCENTRATION_COLUMNS,
    concentration_summary,
    concentration_table,
)
from unitablation.summary import summary_markdown
from unitablation.tables import comparison_row

SCRIPT = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "layer_statistics.py"


def exact_p(n_lost: int, observed: float, baseline: list[int], sizes: list[int]) -> float:
    """P(max_c 100 x_c / |V_c| >= observed) for x multivariate hypergeometric, by enumeration."""
    total = math.comb(sum(baseline), n_lost)
    probability = 0.0
    for losses in itertools.product(*(range(b + 1) for b in baseline)):
        if sum(losses) != n_lost:
            continue
        weight = math.prod(math.comb(b, x) for b, x in zip(baseline, losses, strict=True))
        statistic = max(100 * x / size for x, size in zip(losses, sizes, strict=True))
        if statistic >= observed - 1e-9:
            probability += weight / total
    return probability


def test_p_values_match_exact_enumeration_within_monte_carlo_error() -> None:
    baseline, sizes = [3, 4, 2], [4, 5, 3]
    # every unit loses 3 images net, placed differently
    correct = np.array(
        [
            [2, 4, 0],  # 1 lost in class 0, 2 in class 2: M = max(25, 0, 66.7)
            [2, 3, 1],  # one loss per class: M = max(25, 20, 33.3)
            [0, 4, 2],  # three in class 0: M = 75
            [3, 1, 2],  # three in class 1: M = 60
        ]
    )
    draws = 20000
    table = concentration_table(
        np.arange(4), correct, np.array(baseline), np.array(sizes), draws=draws, seed=3
    )
    assert table["n_lost"].tolist() == [3, 3, 3, 3]
    assert (table["lost_source"] == "net").all()
    for unit in range(4):
        observed = table.loc[unit, "max_class_drop"]
        expected = (baseline[0] - correct[unit, 0]) * 100 / 4
        expected = max(
            expected,
            (baseline[1] - correct[unit, 1]) * 100 / 5,
            (baseline[2] - correct[unit, 2]) * 100 / 3,
        )
        assert observed == pytest.approx(expected, abs=1e-12)
        exact = exact_p(3, observed, baseline, sizes)
        standard_error = math.sqrt(exact * (1 - exact) / draws) + 1 / draws
        assert table.loc[unit, "p_value"] == pytest.approx(exact, abs=5 * standard_error)
    # the null's mean largest drop, by enumeration too
    mean = 0.0
    for losses in itertools.product(*(range(b + 1) for b in baseline)):
        if sum(losses) == 3:
            weight = math.prod(math.comb(b, x) for b, x in zip(baseline, losses, strict=True))
            mean += (
                weight
                / math.comb(9, 3)
                * max(100 * x / s for x, s in zip(losses, sizes, strict=True))
            )
    assert table["null_mean_max_class_drop"].iloc[0] == pytest.approx(mean, rel=0.02)


def test_damage_in_one_tiny_class_gets_the_smallest_p() -> None:
    sizes = np.array([2, 1000, 1000])
    correct = np.array([[0, 1000, 1000]])  # both images of the tiny class lost, nothing else
    table = concentration_table([7], correct, sizes, sizes, draws=999, seed=0)
    row = table.iloc[0]
    assert row["n_lost"] == 2 and row["max_class_drop"] == 100.0
    assert row["p_value"] == 1 / 1000 and row["concentrated"]


def test_damage_spread_evenly_is_not_concentrated() -> None:
    sizes = np.full(4, 50)
    correct = np.array([[45, 45, 45, 45], [50, 50, 50, 30]])
    table = concentration_table([0, 1], correct, sizes, sizes, draws=500, seed=1)
    spread, focused = table.iloc[0], table.iloc[1]
    assert spread["n_lost"] == focused["n_lost"] == 20
    assert spread["p_value"] > 0.5 and not spread["concentrated"]
    assert focused["p_value"] == 1 / 501 and focused["concentrated"]
    # the same draws for the same n: the unit with the smaller M_u never has the smaller p
    assert spread["p_value"] >= focused["p_value"]


def test_gross_losses_set_n_and_units_without_losses_have_no_p() -> None:
    sizes = np.array([10, 10])
    baseline = np.array([8, 9])
    correct = np.array([[8, 9], [8, 9], [6, 10], [9, 5]])
    lost = np.array([[0, 0], [1, 1], [2, 0], [0, 4]])  # unit 1 swaps images; unit 3 gains in 0
    gross = concentration_table(np.arange(4), correct, baseline, sizes, lost, draws=50, seed=0)
    assert list(gross.columns) == list(CONCENTRATION_COLUMNS)
    assert gross["n_lost"].tolist() == [0, 2, 2, 4]
    assert (gross["lost_source"] == "gross").all()
    assert np.isnan(gross.loc[0, "p_value"]) and not gross.loc[0, "concentrated"]
    assert gross.loc[1, "max_class_drop"] == 0.0 and gross.loc[1, "p_value"] == 1.0
    net = concentration_table(np.arange(4), correct, baseline, sizes, draws=50, seed=0)
    # net: unit 1 changes nothing overall, unit 2 loses 2 - 1 = 1, unit 3 loses 4 - 1 = 3
    assert net["n_lost"].tolist() == [0, 0, 1, 3]
    assert (net["lost_source"] == "net").all()
    assert concentration_summary(gross) == {
        "n_units_losing": 3,
        "n_concentrated": int(gross["concentrated"].sum()),
        "concentrated_fraction": gross["concentrated"].sum() / 3,
    }
    assert np.isnan(concentration_summary(net.iloc[:2])["concentrated_fraction"])


def test_p_values_are_seeded_and_do_not_depend_on_other_units() -> None:
    sizes = np.array([20, 30, 25])
    rng = np.random.default_rng(5)
    correct = sizes - rng.integers(1, 6, size=(12, 3))
    first = concentration_table(np.arange(12), correct, sizes, sizes, draws=200, seed=4)
    again = concentration_table(np.arange(12), correct, sizes, sizes, draws=200, seed=4)
    pd.testing.assert_frame_equal(first, again)
    alone = concentration_table([5], correct[5:6], sizes, sizes, draws=200, seed=4)
    assert alone.loc[0, "p_value"] == first.loc[5, "p_value"]
    other = concentration_table(np.arange(12), correct, sizes, sizes, draws=200, seed=5)
    assert not other["p_value"].equals(first["p_value"])


def test_inconsistent_counts_are_refused() -> None:
    sizes = np.array([4, 4])
    with pytest.raises(ValueError, match="lost must lie between 0"):
        concentration_table([0], [[4, 4]], sizes, sizes, [[5, 0]], draws=10, seed=0)
    with pytest.raises(ValueError, match="baseline_correct must lie between 0"):
        concentration_table([0], [[4, 4]], np.array([5, 4]), sizes, draws=10, seed=0)
    with pytest.raises(ValueError, match="do not fit 2 classes"):
        concentration_table([0], [[4, 4, 4]], sizes, sizes, draws=10, seed=0)
    with pytest.raises(ValueError, match="draws must be positive"):
        concentration_table([0], [[4, 4]], sizes, sizes, draws=0, seed=0)


# --- the summary's RQ1 sentence follows the data ---------------------------------------------


def layer_row(correct: np.ndarray, sizes: np.ndarray, layer: str) -> dict[str, object]:
    """A variants.csv row of one layer whose units have the given ablated class counts."""
    concentration = concentration_table(
        np.arange(len(correct)), correct, sizes, sizes, draws=200, seed=0
    )
    overall = 100 * (sizes.sum() - correct.sum(axis=1)) / sizes.sum()
    units = pd.DataFrame(
        {
            "overall_drop": overall,
            "max_class_drop": concentration["max_class_drop"],
            "selectivity": np.linspace(0, 1, len(correct)),
            "iou": 0.0,
            "is_detector": False,
        }
    )
    identity = {"model": "plain", "layer": layer, "basis": "unit"}
    return comparison_row(
        units, pd.DataFrame(), pd.DataFrame(), 100.0, identity, concentration=concentration
    )


def rq1(rows: list[dict[str, object]]) -> str:
    variants = pd.DataFrame(rows)
    text = summary_markdown(variants, variants, {})
    return next(p for p in text.split("\n\n") if p.startswith("**RQ1"))


def test_rq1_says_mostly_a_few_classes_only_when_damage_is_concentrated() -> None:
    sizes = np.full(6, 40)
    rng = np.random.default_rng(0)
    focused = np.tile(sizes, (10, 1))
    focused[np.arange(10), rng.integers(0, 6, size=10)] -= 12  # each unit hits one class
    spread = np.tile(sizes, (10, 1)) - 2  # every unit loses 2 images of every class
    concentrated = rq1([layer_row(focused, sizes, "relu4"), layer_row(focused, sizes, "relu5")])
    assert "relu4 10 of 10, relu5 10 of 10" in concentrated
    assert "hurts mostly a few classes: 20 of 20 units that do damage (100%)" in concentrated
    spread_text = rq1([layer_row(spread, sizes, "relu4"), layer_row(focused, sizes, "relu5")])
    assert "relu4 0 of 10, relu5 10 of 10" in spread_text
    # half concentrated still passes the 50% bar; all spread says the opposite
    assert "hurts mostly a few classes: 10 of 20" in spread_text
    opposite = rq1([layer_row(spread, sizes, "relu4"), layer_row(spread, sizes, "relu5")])
    assert "does not mainly hurt a few classes: only 0 of 20 units" in opposite
    # the extreme drops are the same kind of numbers either way; only the test decides
    assert "largest drop of one class" in opposite and "hurts mostly" not in opposite


# --- the rule adapter --------------------------------------------------------------------------


def adapter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layer_statistics", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_counts(path: Path, correct: np.ndarray, sizes: np.ndarray, lost=None) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("units", data=np.arange(len(correct)))
        handle.create_dataset("correct", data=correct)
        handle.create_dataset("baseline_correct", data=sizes)
        handle.create_dataset("class_sizes", data=sizes)
        if lost is not None:
            handle.create_dataset("lost", data=lost)


def test_adapter_reads_gross_losses_and_checks_the_counts_match_units(tmp_path: Path) -> None:
    sizes = np.array([10, 10])
    correct = np.array([[10, 7], [9, 10]])
    units = pd.DataFrame({"unit": [0, 1], "max_class_drop": [30.0, 10.0]})
    write_counts(tmp_path / "drops.h5", correct, sizes, lost=np.array([[1, 3], [1, 0]]))
    table = adapter().concentration(units, str(tmp_path / "drops.h5"), 100, 0)
    assert table["n_lost"].tolist() == [4, 1] and (table["lost_source"] == "gross").all()
    with pytest.raises(ValueError, match="differs from units.csv by up to 20"):
        adapter().concentration(
            units.assign(max_class_drop=[10.0, 10.0]), str(tmp_path / "drops.h5"), 100, 0
        )
    write_counts(tmp_path / "net.h5", correct, sizes)
    net = adapter().concentration(units, str(tmp_path / "net.h5"), 100, 0)
    assert net["n_lost"].tolist() == [3, 1] and (net["lost_source"] == "net").all()
    with h5py.File(tmp_path / "bad.h5", "w") as handle:
        handle.create_dataset("units", data=[0, 1])
    with pytest.raises(ValueError, match=r"bad.h5 lacks dataset\(s\) \['correct'"):
        adapter().concentration(units, str(tmp_path / "bad.h5"), 100, 0)
