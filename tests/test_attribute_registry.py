"""The attribute registry: a consistent table, read by attribute_table and the statistics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from unitablation.activation_statistics import ActivationStatistics, accumulate
from unitablation.attribute_registry import (
    ATTRIBUTES,
    UnitAttribute,
    attribute,
    class_attributes,
    comparison_attributes,
    numeric_attributes,
    statistics_attributes,
    summary_attributes,
)
from unitablation.attributes import attribute_table
from unitablation.statistics import correlation_table

#: The columns attributes.csv carried before the registry, in order: the new code must keep them.
ATTRIBUTES_CSV = [
    "unit",
    "l1_in",
    "l1_in_bn",
    "l1_out",
    "outgoing_class",
    "selectivity",
    "selective_class",
    "class_correlation",
    "correlated_class",
    "mean_activation",
    "active_fraction",
    "activation_variance",
    "dead",
    "constant",
]
CLASSES = ["a", "b", "c"]


def statistics(
    seed: int = 0, n: int = 40, channels: int = 5
) -> tuple[ActivationStatistics, np.ndarray]:
    """Sums of seeded activations, with the means they came from (for independent checks)."""
    rng = np.random.default_rng(seed)
    means = rng.gamma(2.0, size=(n, channels))
    maxima = means + rng.uniform(-1.5, 1.0, size=(n, channels))
    labels = np.arange(n) % len(CLASSES)
    logits = rng.normal(size=(n, len(CLASSES)))
    return accumulate([(means, maxima, labels, logits)], len(CLASSES)), means


def table_of(stats: ActivationStatistics, attributes=ATTRIBUTES) -> pd.DataFrame:
    """attribute_table's rows with seeded weight columns."""
    channels = len(stats.sum_a)
    norms = [np.linspace(1.0, 2.0, channels) * scale for scale in (1.0, 2.0, 3.0)]
    table, _, _ = attribute_table(
        stats, CLASSES, *norms, np.arange(channels) % 3, rectified=True, attributes=attributes
    )
    return table


def test_names_are_unique_and_argmax_classes_are_class_entries() -> None:
    names = [entry.name for entry in ATTRIBUTES]
    assert len(names) == len(set(names))
    with_argmax = [entry for entry in ATTRIBUTES if entry.argmax_class is not None]
    assert {entry.name for entry in with_argmax} >= {"selectivity", "class_correlation", "iou"}
    for entry in with_argmax:
        assert entry.kind == "numeric"
        assert attribute(entry.argmax_class).kind == "class", entry.name
    # every class attribute is the argmax of exactly one numeric attribute
    argmaxes = [entry.argmax_class for entry in with_argmax]
    assert sorted(argmaxes) == sorted(class_attributes())


def test_derived_lists_keep_the_order_of_the_result_tables() -> None:
    """The rows of correlations.csv and class_prediction.csv, the summary's attributes and the
    comparison columns, as they were before the registry."""
    assert numeric_attributes() == (
        "l1_in",
        "l1_in_bn",
        "l1_out",
        "selectivity",
        "class_correlation",
        "iou",
        "mean_activation",
        "active_fraction",
        "activation_variance",
    )
    assert class_attributes() == (
        "selective_class",
        "correlated_class",
        "outgoing_class",
        "concept_class",
    )
    assert summary_attributes() == ("l1_in", "selectivity", "class_correlation", "iou")
    assert comparison_attributes() == ("selectivity", "iou")


def test_an_unknown_name_is_a_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown unit attribute 'nope'.*selectivity"):
        attribute("nope")


def test_an_entry_whose_computation_does_not_match_its_source_is_refused() -> None:
    with pytest.raises(ValueError, match="'x': from_statistics is given exactly when"):
        UnitAttribute("x", "x", "x", "numeric", "statistics")
    with pytest.raises(ValueError, match="'y': from_statistics"):
        UnitAttribute("y", "y", "y", "numeric", "weights", lambda stats: stats.sum_a)
    with pytest.raises(ValueError, match="only a numeric attribute has argmax_class"):
        UnitAttribute("z", "z", "z", "class", "concepts", argmax_class="w")


def test_attribute_table_columns_are_the_statistics_entries_and_todays_columns() -> None:
    stats, _ = statistics()
    table = table_of(stats)
    assert list(table.columns) == ATTRIBUTES_CSV
    computed = {entry.name for entry in statistics_attributes()}
    held_before = {"unit", "l1_in", "l1_in_bn", "l1_out", "outgoing_class", "dead", "constant"}
    assert set(table.columns) == computed | held_before
    assert table["outgoing_class"].tolist() == ["a", "b", "c", "a", "b"]


def test_attribute_table_refuses_a_table_without_the_weight_attributes() -> None:
    stats, _ = statistics()
    without = tuple(entry for entry in ATTRIBUTES if entry.name != "l1_out")
    with pytest.raises(ValueError, match=r"weight attributes .* are not the ones"):
        table_of(stats, without)


def test_a_computation_of_the_wrong_shape_names_the_attribute() -> None:
    stats, _ = statistics()
    broken = UnitAttribute("broken", "b", "b", "numeric", "statistics", lambda s: s.sum_ap)
    with pytest.raises(ValueError, match=r"'broken': \(5, 3\) values for 5 units"):
        table_of(stats, (*ATTRIBUTES, broken))


def test_an_attribute_added_to_a_table_flows_into_attributes_and_correlations() -> None:
    """A new statistics attribute (root mean square of a_u) in an extended copy of the table:
    attribute_table computes it (checked against numpy) and correlation_table correlates it."""
    rms = UnitAttribute(
        "rms_activation",
        "RMS activation",
        "RMS activation",
        "numeric",
        "statistics",
        lambda stats: np.sqrt(stats.sum_a2 / stats.count),
    )
    extended = (*ATTRIBUTES, rms)
    stats, means = statistics()
    table = table_of(stats, extended)
    assert list(table.columns) == [*ATTRIBUTES_CSV[:-2], "rms_activation", "dead", "constant"]
    np.testing.assert_allclose(table["rms_activation"], np.sqrt((means**2).mean(0)), rtol=1e-12)
    pd.testing.assert_frame_equal(table.drop(columns="rms_activation"), table_of(stats))
    assert "rms_activation" not in numeric_attributes()  # the registry itself is unchanged

    units = table.assign(overall_drop=[0.5, 0.1, 0.9, 0.3, 0.2], max_class_drop=np.arange(5.0))
    correlations = correlation_table(units, numeric_attributes(extended), bootstrap=20)
    rows = correlations[correlations["attribute"] == "rms_activation"]
    assert rows["target"].tolist() == ["overall_drop", "max_class_drop"]
    assert rows["spearman"].iloc[1] == pytest.approx(
        pd.Series(table["rms_activation"]).corr(pd.Series(np.arange(5.0)), method="spearman")
    )
    assert correlations["attribute"].tolist()[-2:] == ["rms_activation"] * 2


def test_a_class_attribute_of_the_statistics_gets_class_names() -> None:
    """A class entry computed from the sums: indices become names, -1 the empty string."""
    lowest = UnitAttribute(
        "least_class",
        "least",
        "least-active class",
        "class",
        "statistics",
        lambda stats: np.where(
            stats.sum_a > np.median(stats.sum_a), stats.class_sums.argmin(axis=0), -1
        ),
    )
    stats, means = statistics()
    table = table_of(stats, (*ATTRIBUTES, lowest))
    labels = np.arange(len(means)) % len(CLASSES)
    sums = np.stack([means[labels == k].sum(0) for k in range(len(CLASSES))])
    totals = means.sum(0)
    above = totals > np.median(totals)
    expected = [CLASSES[k] if keep else "" for k, keep in zip(sums.argmin(0), above, strict=True)]
    assert "" in expected and len(set(expected)) > 1
    assert table["least_class"].tolist() == expected
    assert list(table.columns)[-3:] == ["least_class", "dead", "constant"]


def test_registry_and_analysis_modules_import_without_torch() -> None:
    """The analysis environment has no torch: the registry and its readers must not need it."""
    script = (
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is not installed here')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import unitablation.attribute_registry, unitablation.activation_statistics\n"
        "import unitablation.statistics, unitablation.tables, unitablation.summary\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
