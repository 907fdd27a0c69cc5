"""Degenerate units and classes: a dead unit (always zero), a constant unit, an attribute or
drop constant over units, and a class the model never predicts, against hand computation in
every library step, and once through the real pipeline on a doctored tiny model."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn
from workflow_runs import snakemake, write_config

from unitablation.accuracy import class_accuracy_table, never_predicted
from unitablation.attributes import accumulate, attribute_table, is_rectified, softmax
from unitablation.broden import BrodenWriter, LabelDef, read_broden
from unitablation.concepts import concept_classes, concept_iou, concept_labels
from unitablation.cumulative import class_rankings
from unitablation.degenerate import dead_flags
from unitablation.drops import drop_tables
from unitablation.figures.attributes import attributes_figure
from unitablation.figures.class_prediction import class_prediction_figure
from unitablation.figures.correlations import correlations_figure
from unitablation.figures.drops import drops_figure
from unitablation.figures.rotation import rotation_figure
from unitablation.figures.variants import variants_figure
from unitablation.models import read_checkpoint
from unitablation.statistics import class_prediction_table, correlation_table, top_classes
from unitablation.summary import summary_markdown
from unitablation.tables import comparison_row, comparison_table, unit_table

CLASSES = ["a", "b", "c"]
LABELS = np.array([0, 0, 1, 1, 2, 2])
#: Class c never wins: its logit is far below the others, so p_c(x) is exactly 0 in float64.
LOGITS = np.array(
    [[2.0, 0.0, -1e4], [0.0, 1.0, -1e4], [0.5, 1.5, -1e4], [3.0, 1.0, -1e4], [1.0, 0.0, -1e4]]
    + [[0.0, 2.0, -1e4]],
    dtype=np.float32,
)  # predictions a, b, b, a, a, b


# ---------------------------------------------------------------------------------------------
# Attributes: a dead unit, a constant but active unit, a class never predicted.


def degenerate_statistics():
    """Unit 0 ordinary, unit 1 dead (all zero), unit 2 constant 0.5 (active everywhere)."""
    means = np.array(
        [[1.0, 0.0, 0.5], [2.0, 0.0, 0.5], [3.0, 0.0, 0.5], [4.0, 0.0, 0.5], [0.0, 0.0, 0.5]]
        + [[1.0, 0.0, 0.5]],
        dtype=np.float32,
    )
    maxima = np.stack([2 * means[:, 0], means[:, 1], np.ones(6)], axis=1).astype(np.float32)
    batches = [(means[:4], maxima[:4], LABELS[:4], LOGITS[:4])]
    batches.append((means[4:], maxima[4:], LABELS[4:], LOGITS[4:]))
    return accumulate(iter(batches), len(CLASSES)), means


def test_dead_and_constant_units_have_no_class_and_no_correlation() -> None:
    statistics, means = degenerate_statistics()
    zeros = np.zeros(3)
    table, mu, rho = attribute_table(statistics, CLASSES, zeros, zeros, zeros, rectified=True)
    # ordinary unit: class means 1.5, 3.5, 0.5 -> SI (3.5 - 1) / (3.5 + 1 + 1e-7), class b
    assert table.loc[0, "selectivity"] == pytest.approx(2.5 / (4.5 + 1e-7), rel=1e-12)
    assert table.loc[0, "selective_class"] == "b" and not table.loc[0, "dead"]
    p = softmax(LOGITS)
    assert (p[:, 2] == 0.0).all()  # the never-predicted class has a constant probability
    expected = [np.corrcoef(means[:, 0].astype(np.float64), p[:, c])[0, 1] for c in (0, 1)]
    np.testing.assert_allclose(rho[0, :2], expected, atol=1e-9)
    assert np.isnan(rho[:, 2]).all()  # correlation with a constant p_c: undefined
    assert table.loc[0, "class_correlation"] == pytest.approx(max(expected), abs=1e-9)
    assert table.loc[0, "correlated_class"] == CLASSES[int(np.argmax(expected))]
    assert table.loc[0, "active_fraction"] == pytest.approx(5 / 6)
    # dead unit: mu all 0 -> SI 0 / (0 + 1e-7) = 0, no selective class, correlation NaN
    dead = table.loc[1]
    np.testing.assert_array_equal(mu[1], [0.0, 0.0, 0.0])
    assert dead["selectivity"] == 0.0 and dead["selective_class"] == ""
    assert np.isnan(dead["class_correlation"]) and dead["correlated_class"] == ""
    assert np.isnan(rho[1]).all()
    assert dead["dead"] and dead["active_fraction"] == 0.0
    assert dead["mean_activation"] == 0.0 and dead["activation_variance"] == 0.0
    # constant 0.5 unit: active on every image, so not dead; still no class, no correlation
    constant = table.loc[2]
    assert not constant["dead"] and constant["active_fraction"] == 1.0
    assert constant["selectivity"] == 0.0 and constant["selective_class"] == ""
    assert np.isnan(constant["class_correlation"]) and constant["correlated_class"] == ""
    assert table["dead"].tolist() == [False, True, False]
    assert table["constant"].tolist() == [False, True, True]


def test_never_active_units_are_dead_only_where_maps_are_rectified() -> None:
    """A rotated direction or a pre-activation unit with z <= 0 everywhere is not dead."""
    statistics, _ = degenerate_statistics()
    zeros = np.zeros(3)
    table, _, _ = attribute_table(statistics, CLASSES, zeros, zeros, zeros, rectified=False)
    assert table["dead"].tolist() == [False, False, False]
    assert table["constant"].tolist() == [False, True, True]


def test_rectified_layers_are_relus_or_sign_keeping_modules_after_one() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.AdaptiveAvgPool2d(1),
    )
    rectified = {name: is_rectified(model, name) for name in ("0", "1", "2", "3", "4", "5")}
    assert rectified == {
        "0": False,
        "1": False,
        "2": True,
        "3": True,
        "4": False,
        "5": False,
    }


# ---------------------------------------------------------------------------------------------
# Baseline accuracy and drops of a class never predicted.


def test_baseline_counts_predictions_and_names_the_class_never_predicted() -> None:
    table = class_accuracy_table(LABELS, LOGITS, CLASSES)
    # predictions a, b, b, a, a, b against labels a, a, b, b, c, c
    assert table["n_predicted"].tolist() == [3, 3, 0, 6]  # overall row: every image
    assert table["n_correct"].tolist() == [1, 1, 0, 2]
    np.testing.assert_allclose(table["accuracy"], [50.0, 50.0, 0.0, 100 * 2 / 6])
    assert never_predicted(table) == ["c"]
    assert never_predicted(table.drop(columns="n_predicted")) == []  # an older table


def test_drops_of_a_class_never_predicted_and_of_a_dead_unit() -> None:
    # classes a, b, c with 2 eval images each; the model gets 1, 1, 0 right (c never predicted)
    result = drop_tables(
        units=np.array([0, 1, 2]),
        correct=np.array([[0, 1, 1], [1, 1, 0], [0, 0, 0]]),
        prob_sum=np.array([[0.4, 1.2, 0.3], [1.0, 1.2, -2.2e-16], [0.9, 0.6, 0.0]]),
        baseline_correct=np.array([1, 1, 0]),
        baseline_prob_sum=np.array([1.0, 1.2, 0.0]),
        class_sizes=np.array([2, 2, 2]),
        classes=CLASSES,
    )
    drops = result.drops.set_index("unit")
    class_drops = result.class_drops.set_index("unit")
    # unit 0: ablating it makes c predicted once: d_c = 0 - 50 = -50 (a gain), d_a = 50
    assert class_drops.loc[0].tolist() == [50.0, 0.0, -50.0]
    assert drops.loc[0, "max_class_drop"] == 50.0 and drops.loc[0, "most_hurt_class"] == "a"
    assert drops.loc[0, "overall_drop"] == 0.0 and drops.loc[0, "n_tied"] == 1
    # unit 1 (dead: ablation is a no-op): every drop 0, all three classes tied; its probability
    # drops are rounding noise (1.1e-16 for c), equal within 1e-12, so the documented tie rule
    # (equal probability drops -> lower class index) names a, not c
    assert class_drops.loc[1].tolist() == [0.0, 0.0, 0.0]
    assert result.class_prob_drops[1, 2] == pytest.approx(1.1e-16, rel=1e-6)
    assert drops.loc[1, "max_class_drop"] == 0.0 and drops.loc[1, "n_tied"] == 3
    assert drops.loc[1, "most_hurt_class"] == "a" and drops.loc[1, "top5_mean_drop"] == 0.0
    assert drops.loc[1, "n_classes_hurt_5"] == 0
    listed = top_classes(class_drops.to_numpy(), result.class_prob_drops, CLASSES)
    assert listed == ["a;b;c", "a;b;c", "b;a;c"]  # the first is always most_hurt_class
    # unit 2: a and b tie at 50 points; b's true-class probability fell more (0.3 vs 0.05)
    assert drops.loc[2, "n_tied"] == 2 and drops.loc[2, "most_hurt_class"] == "b"
    np.testing.assert_allclose(result.class_prob_drops[2], [0.05, 0.3, 0.0])


def test_cumulative_ranking_of_a_class_never_predicted() -> None:
    # class c: no unit can lower an accuracy of 0; ranks by probability drop, then unit index
    drops = np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [10.0, 5.0, 0.0]])
    prob = np.array([[0.1, 0.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.1, 0.01]])
    order = class_rankings(drops, prob)
    assert order.tolist() == [[2, 0, 1], [2, 0, 1], [2, 0, 1]]


# ---------------------------------------------------------------------------------------------
# Statistics: NaN attributes excluded and counted, constant columns undefined and said so.


def units_table() -> pd.DataFrame:
    """Six units; unit 1 dead (NaN class correlation), l1_out constant, max_class_drop 0."""
    return pd.DataFrame(
        {
            "unit": range(6),
            "overall_drop": [1.0, 0.0, 0.2, 0.5, 0.1, 0.8],
            "max_class_drop": [0.0] * 6,
            "class_correlation": [0.9, np.nan, 0.3, 0.5, 0.1, 0.7],
            "l1_out": [2.0] * 6,
            "selectivity": [0.5, 0.0, 0.2, 0.4, 0.1, 0.3],
            "iou": [0.2, 0.0, np.nan, np.nan, np.nan, np.nan],
            "dead": [False, True, False, False, False, False],
        }
    )


def test_correlations_exclude_and_count_nan_and_say_why_they_are_undefined() -> None:
    table = correlation_table(units_table(), bootstrap=200, seed=3).set_index(
        ["attribute", "target"]
    )
    assert (table["n_dead"] == 1).all()
    row = table.loc[("class_correlation", "overall_drop")]
    assert (row["n_units"], row["n_excluded"]) == (5, 1)
    # the five finite units have identical rankings: rho = 1 exactly
    kept = [0, 2, 3, 4, 5]
    x, y = units_table()["class_correlation"][kept], units_table()["overall_drop"][kept]
    assert row["spearman"] == pytest.approx(1.0) == stats.spearmanr(x, y).statistic
    assert row["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert pd.isna(row["undefined_reason"]) or row["undefined_reason"] == ""
    reasons = {
        ("l1_out", "overall_drop"): "attribute constant over units",
        ("selectivity", "max_class_drop"): "target constant over units",
        ("l1_out", "max_class_drop"): "attribute constant over units; target constant over units",
        ("iou", "overall_drop"): "fewer than 3 units with finite values",
    }
    for key, reason in reasons.items():
        assert table.loc[key, "undefined_reason"] == reason
        statistics = ["spearman", "spearman_p", "pearson", "pearson_p", "ci_low", "ci_high"]
        assert table.loc[key, statistics].isna().all()
    assert table.loc[("l1_out", "overall_drop"), "n_excluded"] == 0  # constant, not excluded
    assert table.loc[("iou", "overall_drop"), "n_excluded"] == 4


def test_class_prediction_leaves_dead_units_out_and_counts_them() -> None:
    units = pd.DataFrame(
        {
            "unit": range(4),
            "most_hurt_class": ["a", "a", "c", "c"],
            "top5_hurt_classes": ["a;b;c", "a;b;c", "c;b;a", "c;a;b"],
            "selective_class": ["a", "", "b", "c"],
            "outgoing_class": ["a", "a", "a", "a"],
            "dead": [False, True, False, False],
            "max_class_drop": [2.0, 0.0, 4.0, 2.0],
        }
    )
    both = class_prediction_table(units, n_classes=3, permutations=0)
    # the dead unit changes no class, so the hurting set does not hold it at all
    hurting = both[both["unit_set"] == "hurting"].set_index("attribute")
    assert hurting["n_units"].tolist() == [3, 3] and (hurting["n_dead"] == 0).all()
    table = both[both["unit_set"] == "all"].set_index("attribute")
    selective = table.loc["selective_class"]
    assert (selective["n_units"], selective["n_excluded"], selective["n_dead"]) == (3, 1, 1)
    assert selective["top1_hit_rate"] == pytest.approx(2 / 3)  # units 0 and 3
    assert selective["top5_hit_rate"] == pytest.approx(1.0)
    # the dead unit's outgoing class a equals its tie-rule most-hurt class a: not a hit
    outgoing = table.loc["outgoing_class"]
    assert (outgoing["n_units"], outgoing["n_excluded"]) == (3, 1)
    assert outgoing["top1_hit_rate"] == pytest.approx(1 / 3)  # unit 0; with unit 1 it was 2/4
    assert dead_flags(units.assign(dead=["False", "True", "false", np.nan])).tolist() == [
        False,
        True,
        False,
        False,
    ]
    assert not dead_flags(units.drop(columns="dead")).any()


# ---------------------------------------------------------------------------------------------
# Concept IoU of a unit that never fires.


def write_set(root: Path, images: list[np.ndarray]):
    """A Broden set of 4 x 4 images, each with one object layer."""
    writer = BrodenWriter(root, [LabelDef(1, "box", "object"), LabelDef(2, "ball", "object")])
    for k, objects in enumerate(images):
        writer.add(f"{k:03d}", np.zeros((8, 8, 3), np.uint8), {"object": [objects]}, {})
    writer.close()
    return read_broden(root)


def test_a_dead_unit_marks_no_pixel_and_names_no_concept(tmp_path: Path) -> None:
    first = np.zeros((4, 4), np.int32)
    first[0, :2] = 1  # two box pixels
    second = np.zeros((4, 4), np.int32)
    second[3, 3], second[2, 3] = 1, 2  # one box, one ball pixel
    broden = write_set(tmp_path / "broden", [first, second])
    maps = np.zeros((2, 2, 4, 4), np.float32)  # unit 0 dead; unit 1 fires at one box pixel
    maps[0, 1, 0, 0] = 1.0
    result = concept_iou(lambda units: maps[:, units], 2, broden, quantile=0.5)
    assert result.thresholds.tolist() == [0.0, 0.0]  # the median of mostly zeros
    # mask is map > T_u, strictly: the dead unit's 0 > 0 marks no pixel, so A = I = 0
    assert (result.activation[0] == 0).all() and (result.intersection[0] == 0).all()
    assert (result.iou[0] == 0).all()
    box = result.label_names.index("box")
    # unit 1: I = 1, A = 1 (its one pixel), G = 3 box pixels: IoU = 1 / (1 + 3 - 1)
    assert result.activation[1].sum() == 1 and result.intersection[1, box] == 1
    assert result.iou[1, box] == pytest.approx(1 / 3)
    # an argmax over the dead unit's all-zero IoUs would name the first label ("box")
    assert result.best()[0].tolist() == [-1, box]
    table = result.table()
    assert table.loc[0, ["concept", "concept_category"]].tolist() == ["", ""]
    assert table.loc[0, "concept_object"] == "" and table.loc[0, "iou"] == 0.0
    assert table.loc[1, ["concept", "concept_category", "concept_object"]].tolist() == [
        "box",
        "object",
        "box",
    ]
    assert not table["is_detector"].iloc[0]
    labels = concept_labels(broden)
    classes = ["box", "ball"]  # class names that are label names: box implies class "box"
    assert concept_classes(labels, result.best()[0], classes) == ["", "box"]


# ---------------------------------------------------------------------------------------------
# units.csv, comparison rows, summary and figures with degenerate units and classes.


def analysis_tables():
    """units.csv of six units (unit 1 dead), its statistics and comparison rows."""
    units = units_table().drop(columns=["max_class_drop", "overall_drop"])
    drops = pd.DataFrame(
        {
            "unit": range(6),
            "overall_drop": [1.0, 0.0, 0.2, 0.5, 0.1, 0.8],
            "max_class_drop": [10.0, 0.0, 2.0, 5.0, 1.0, 8.0],
            "most_hurt_class": ["b", "a", "a", "b", "a", "b"],
            "most_hurt_class_index": [1, 0, 0, 1, 0, 1],
            "n_tied": [1, 3, 1, 1, 1, 1],
            "top5_mean_drop": [3.0, 0.0, 1.0, 2.0, 0.5, 3.0],
            "method": "linear",
        }
    )
    class_drops = pd.DataFrame(
        {
            "unit": range(6),
            "a": [0.0, 0.0, 2.0, 0.0, 1.0, 0.0],
            "b": [10.0, 0.0, 0.0, 5.0, 0.0, 8.0],
            "c": [0.0, 0.0, 0.0, 0.0, 0.0, -4.0],
        }
    )
    attributes = units.drop(columns=["iou"]).assign(
        l1_in=np.nan,
        selective_class=["b", "", "a", "b", "c", "b"],
        correlated_class=["b", "", "a", "a", "c", "b"],
        mean_activation=[1.0, 0.0, 0.5, 0.7, 0.2, 0.9],
        active_fraction=[1.0, 0.0, 0.5, 0.8, 0.3, 1.0],
    )
    concepts = pd.DataFrame(
        {
            "unit": range(6),
            "iou": [0.05, 0.0, 0.01, 0.02, 0.0, 0.03],
            "concept": ["box", "", "box", "ball", "", "box"],
            "concept_class": ["b", "", "a", "", "", "b"],
            "is_detector": [True, False, False, False, False, False],
        }
    )
    identity = {"model": "plain", "layer": "features.relu5", "basis": "unit"}
    table = unit_table(drops, class_drops, np.zeros((6, 3)), attributes, concepts, identity)
    correlations = correlation_table(table, bootstrap=50)
    prediction = class_prediction_table(table, n_classes=3, permutations=50)
    return table, correlations, prediction, identity


def test_units_table_and_comparison_row_carry_dead_units_and_missing_classes() -> None:
    table, correlations, prediction, identity = analysis_tables()
    assert table["dead"].tolist() == [False, True, False, False, False, False]
    assert np.isnan(table.loc[1, "class_correlation"]) and table.loc[1, "selective_class"] == ""
    row = comparison_row(table, correlations, prediction, 66.7, identity, ["c"])
    assert row["n_dead_units"] == 1 and row["n_units"] == 6
    assert row["n_classes_never_predicted"] == 1 and row["classes_never_predicted"] == "c"
    assert np.isnan(row["spearman_l1_in_overall_drop"])  # every l1_in is NaN
    plain = comparison_row(table.drop(columns="dead"), correlations, prediction, 66.7, identity)
    assert plain["n_dead_units"] == 0 and plain["classes_never_predicted"] == ""


def test_summary_says_what_is_degenerate_and_what_n_a_means() -> None:
    table, correlations, prediction, identity = analysis_tables()
    rows = [comparison_row(table, correlations, prediction, 66.7, identity, ["c"])]
    rotation = comparison_table(rows)
    text = summary_markdown(rotation, rotation, {})
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    degenerate = text.split("**Degenerate units and classes.** ")[1]
    assert "`plain` never predicts `c` on the eval split" in degenerate
    assert "`plain` features.relu5 (unit basis) 1 of 6" in degenerate
    assert "incoming L1 norm n/a" in text and "n/a marks an undefined number" in text
    healthy = comparison_table(
        [comparison_row(table.drop(columns="dead"), correlations, prediction, 66.7, identity)]
    )
    assert "every model predicted every class" in summary_markdown(healthy, healthy, {})


def test_figures_draw_dead_units_constant_and_undefined_columns(tmp_path: Path) -> None:
    table, correlations, prediction, _ = analysis_tables()
    flat = table.assign(max_class_drop=0.0, overall_drop=0.0, l1_out=2.0)  # nothing varies
    all_nan = table.assign(class_correlation=np.nan, selectivity=np.nan, iou=np.nan)
    for units in (table, flat, all_nan):
        figures = [
            attributes_figure(units, correlations),
            drops_figure({"unit": units, "rot1": units}),
            rotation_figure(pd.concat([units, units.assign(basis="rot1")])),
            variants_figure(units, {"plain": float("nan")}),
        ]
        for figure in figures:
            figure.savefig(tmp_path / "figure.png")
    undefined = correlations.assign(spearman=np.nan, spearman_p=np.nan, layer="features.relu5")
    correlations_figure(undefined).savefig(tmp_path / "heatmap.png")
    empty_rates = prediction.assign(
        top1_hit_rate=np.nan, top5_hit_rate=np.nan, layer="features.relu5"
    )
    class_prediction_figure(empty_rates).savefig(tmp_path / "rates.png")


# ---------------------------------------------------------------------------------------------
# The real pipeline on a doctored model: a dead conv5 unit and a class never predicted.

DEAD_UNIT = 3
MISSING_CLASS = 1


def doctor_checkpoint(path: Path) -> str:
    """Make conv5 unit DEAD_UNIT dead (zero filter, bias -10: 0 after the ReLU on every image)
    and class MISSING_CLASS never predicted (logit bias -1e4); return that class's name.

    The tiny run's one-epoch head is nearly flat, so it is replaced by a readable one: hidden
    unit j of fc6 sums the pooled map of conv5 channel j, logit 0 reads channel 1 and logit 2
    channel 4, so predictions vary between those two classes and ablating a unit changes some.
    """
    checkpoint = read_checkpoint(path)
    state = checkpoint.state_dict
    state["features.conv5.weight"][DEAD_UNIT] = 0.0
    state["features.conv5.bias"][DEAD_UNIT] = -10.0
    fc6 = torch.zeros_like(state["classifier.fc6.weight"])  # (hidden, channels * 2 * 2)
    for channel in range(fc6.shape[1] // 4):
        fc6[channel, 4 * channel : 4 * channel + 4] = 1.0
    fc7 = torch.zeros_like(state["classifier.fc7.weight"])
    fc7[0, 1], fc7[2, 4] = 1.0, 1.0
    state["classifier.fc6.weight"], state["classifier.fc7.weight"] = fc6, fc7
    state["classifier.fc6.bias"].zero_()
    state["classifier.fc7.bias"].zero_()
    state["classifier.fc7.bias"][MISSING_CLASS] = -1e4
    torch.save({"state_dict": state, "classes": checkpoint.classes}, path)
    return checkpoint.classes[MISSING_CLASS]


@pytest.mark.workflow
def test_pipeline_runs_and_reports_a_dead_unit_and_a_class_never_predicted(
    tiny_run: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "doctored"
    shutil.copytree(tiny_run / "results/world", workdir / "results/world")
    for name in ("model.pt", "training.csv"):
        (workdir / "results/plain").mkdir(parents=True, exist_ok=True)
        shutil.copy2(tiny_run / "results/plain" / name, workdir / "results/plain" / name)
    missing = doctor_checkpoint(workdir / "results/plain/model.pt")
    now = time.time()  # the world, then the model, newer than the scripts: nothing upstream reruns
    for path in [*(workdir / "results/world").rglob("*"), workdir / "results/world"]:
        os.utime(path, (now, now), follow_symlinks=False)
    for name in ("model.pt", "training.csv"):
        os.utime(workdir / "results/plain" / name, (now + 1, now + 1))
    config = write_config(
        tmp_path / "doctored.yaml",
        {"only_models": ["plain"], "layers": ["features.relu5"], "rotation.seeds": []},
    )
    folder = "results/plain/features.relu5/unit"
    targets = [f"{folder}/units.csv", "results/summary.md"]
    result = snakemake(workdir, "--cores", "2", *targets, config=config)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rule train_model" not in result.stdout + result.stderr  # the doctored weights stay

    baseline = pd.read_csv(workdir / "results/plain/baseline.csv").set_index("class")
    assert baseline.loc[missing, "n_predicted"] == 0 and baseline.loc[missing, "accuracy"] == 0
    assert baseline.loc["overall", "n_predicted"] == baseline.loc["overall", "n_images"]

    units = pd.read_csv(workdir / folder / "units.csv").set_index("unit")
    dead = units.loc[DEAD_UNIT]
    assert dead["dead"] and dead["active_fraction"] == 0 and dead["mean_activation"] == 0
    assert np.isnan(dead["class_correlation"]) and pd.isna(dead["correlated_class"])
    assert dead["selectivity"] == 0 and pd.isna(dead["selective_class"])
    assert dead["iou"] == 0 and pd.isna(dead["concept"]) and pd.isna(dead["concept_class"])
    assert dead["overall_drop"] == 0 and dead["max_class_drop"] == 0  # ablating it: a no-op
    assert dead["n_tied"] == 3 and dead["most_hurt_class_index"] == 0  # the tie rule, no noise
    assert units["dead"].sum() == 1

    correlations = pd.read_csv(workdir / folder / "correlations.csv")
    assert (correlations["n_dead"] == 1).all()
    rows = correlations[correlations["attribute"] == "class_correlation"]
    n_nan = int(units["class_correlation"].isna().sum())
    assert (rows["n_excluded"] == n_nan).all() and n_nan >= 1
    assert (rows["n_units"] == len(units) - n_nan).all()
    both = pd.read_csv(workdir / folder / "class_prediction.csv")
    prediction = both[both["unit_set"] == "all"].set_index("attribute")
    assert (prediction["n_dead"] == 1).all()
    assert prediction.loc["selective_class", "n_excluded"] >= 1
    assert (both.loc[both["unit_set"] == "hurting", "n_dead"] == 0).all()  # M_u = 0: not hurting
    concentration = pd.read_csv(workdir / folder / "concentration.csv").set_index("unit")
    assert concentration.loc[DEAD_UNIT, "n_lost"] == 0
    assert np.isnan(concentration.loc[DEAD_UNIT, "p_value"])

    variants = pd.read_csv(workdir / "results/comparison/variants.csv")
    assert variants["n_dead_units"].tolist() == [1]
    assert variants["classes_never_predicted"].tolist() == [missing]  # the others are predicted
    summary = (workdir / "results/summary.md").read_text()
    assert f"`plain` never predicts `{missing}`" in summary
    assert "`plain` features.relu5 (unit basis) 1 of 8" in summary
    assert not re.search(r"\bnan\b", summary, re.IGNORECASE)
