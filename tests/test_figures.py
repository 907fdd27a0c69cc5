"""Paper figures: each registered figure drawn by the rule script's main() on small synthetic
tables, checked through the Figure; the registry and the mask definition."""

from __future__ import annotations

import importlib.util
import logging
import pkgutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch
from matplotlib.text import Text
from PIL import Image

from unitablation import figures, masks
from unitablation.broden import BrodenWriter, LabelDef
from unitablation.figures import (
    attributes,
    class_prediction,
    correlations,
    cumulative,
    rotation,
    variants,
)
from unitablation.figures import registry as reg
from unitablation.figures.drops import drops_figure
from unitablation.figures.examples import example_units, hurt_classes, most_hurt_classes
from unitablation.figures.rotation import detector_count
from unitablation.figures.style import MIN_FONT_SIZE, save_figure
from unitablation.figures.variants import baseline_accuracy
from unitablation.masks import unit_mask, upsample_numpy
from unitablation.table_io import read_flag

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "workflow" / "scripts"
CLASSES = ["apple", "boat", "cat", "dune", "elm", "fog"]
LAYERS = ["features.relu4", "features.relu5"]
N_UNITS = 12
DPI = 50


def figure_script() -> ModuleType:
    """Import workflow/scripts/figure.py as a module (its Snakemake adapter stays idle)."""
    spec = importlib.util.spec_from_file_location("figure_script", SCRIPTS / "figure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def draw(
    name: str,
    inputs: Mapping[str, Any],
    stem: Path,
    wildcards: Mapping[str, str] | None = None,
    **settings: Any,
) -> Figure:
    """Draw a registered figure through the rule script, as its rule would, at DPI."""
    keys = {f"figures.{key}": value for key, value in settings.items()}
    wildcards = wildcards or {"model": "plain", "layer": "features.relu5"}
    return figure_script().main(
        name, inputs, {"figures.dpi": DPI, **keys}, wildcards, str(stem) + ".png"
    )


def units_table(layer: str, basis: str, seed: int, model: str = "plain") -> pd.DataFrame:
    """A units.csv-like table with random drops and attributes; l1_out all NaN."""
    rng = np.random.default_rng(seed)
    n = N_UNITS
    table = pd.DataFrame(
        {
            "model": model,
            "layer": layer,
            "basis": basis,
            "unit": np.arange(n),
            "overall_drop": rng.normal(0.3, 0.3, n),
            "max_class_drop": rng.gamma(2.0, 4.0, n),
            "most_hurt_class": rng.choice(CLASSES, n),
            "l1_in": rng.uniform(1, 5, n),
            "l1_in_bn": rng.uniform(1, 5, n),
            "l1_out": np.nan,
            "selectivity": rng.uniform(0, 1, n),
            "class_correlation": rng.uniform(-0.2, 0.8, n),
            "iou": rng.uniform(0, 0.2, n),
            "concept": rng.choice(["red", "box", "dotted"], n),
            "concept_category": "color",
            "mean_activation": rng.uniform(0, 2, n),
            "active_fraction": rng.uniform(0, 1, n),
            "is_detector": rng.uniform(0, 1, n) < 0.4,
        }
    )
    return table


def write_csv(table: pd.DataFrame, path: Path) -> str:
    """Write a table, creating folders; return the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return str(path)


def check_saved(stem: Path, figure: Figure, dpi: float) -> None:
    """PNG and PDF exist, are non-empty, the PNG is figsize * dpi pixels, the PDF is a PDF."""
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")
    assert png.stat().st_size > 0 and pdf.stat().st_size > 0
    assert pdf.read_bytes().startswith(b"%PDF")
    width, height = figure.get_size_inches() * dpi
    with Image.open(png) as image:
        assert abs(image.size[0] - width) <= 1 and abs(image.size[1] - height) <= 1
    assert not list(stem.parent.glob(".*.partial"))


def check_labelled(axes: list[Axes]) -> None:
    """Every axes has non-empty x and y labels."""
    assert axes
    for ax in axes:
        assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), ax.get_title()


def check_fonts(figure: Figure) -> None:
    """Every visible, non-empty text is at least MIN_FONT_SIZE points (legible at 7 in)."""
    figure.canvas.draw()  # creates the ticks that are made lazily
    texts = [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < MIN_FONT_SIZE]
    assert not small
    assert figure.get_size_inches()[0] == pytest.approx(7.0)


def all_texts(figure: Figure) -> list[str]:
    """Text of every Text artist of a figure."""
    return [t.get_text() for t in figure.findobj(Text)]


# ---------------------------------------------------------------------------------------------
# Masks: the numpy and the torch implementation of the one definition agree.


@pytest.mark.parametrize(
    ("shape", "size"), [((5, 7), (16, 12)), ((4, 4), (9, 13)), ((3, 3), (3, 3))]
)
def test_bilinear_resize_matches_torch(shape: tuple[int, int], size: tuple[int, int]) -> None:
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = F.interpolate(
        torch.from_numpy(array)[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(upsample_numpy(array, size), expected, atol=1e-5)


@pytest.mark.parametrize(("shape", "size"), [((2, 5, 4, 6), (13, 17)), ((3, 2, 7, 7), (7, 7))])
def test_numpy_and_torch_masks_agree_on_random_maps(
    shape: tuple[int, ...], size: tuple[int, int]
) -> None:
    """Both implementations in float64: the same values to rounding, and the same masks."""
    rng = np.random.default_rng(5)
    maps = rng.normal(size=shape)
    thresholds = rng.normal(0.0, 0.5, shape[1])
    torch_up = masks.upsample_torch(torch.from_numpy(maps), size).numpy()
    np.testing.assert_allclose(masks.upsample_numpy(maps, size), torch_up, rtol=0, atol=1e-12)
    torch_masks = masks.unit_masks_torch(torch.from_numpy(maps), size, torch.from_numpy(thresholds))
    assert 0 < int(torch_masks.sum()) < torch_masks.numel()
    for b in range(shape[0]):
        for u in range(shape[1]):
            numpy_mask = unit_mask(maps[b, u], size, thresholds[u])
            np.testing.assert_array_equal(numpy_mask, torch_masks[b, u].numpy())


def test_concept_iou_upsamples_through_the_mask_module() -> None:
    """concepts.upsample is the torch implementation of masks (bit for bit, float32 maps)."""
    from unitablation.concepts import upsample

    maps = torch.from_numpy(np.random.default_rng(2).normal(size=(2, 3, 4, 5)).astype(np.float32))
    expected = F.interpolate(maps, size=(9, 11), mode="bilinear", align_corners=False)
    assert torch.equal(upsample(maps, (9, 11)), expected)
    assert upsample(maps, (4, 5)) is maps


def test_unit_mask_is_upsampled_map_above_threshold() -> None:
    activation = np.array([[0.0, 1.0], [0.0, 1.0]])
    # columns of the 4-wide output sit at source x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 -> 1
    np.testing.assert_array_equal(
        unit_mask(activation, (2, 4), 0.5), [[False, False, True, True]] * 2
    )


# ---------------------------------------------------------------------------------------------
# 1. Drops.


def test_drops_figure(tmp_path: Path) -> None:
    paths, tables = [], {}
    for seed, basis in enumerate(("unit", "rot1", "rot2")):
        tables[basis] = units_table("features.relu5", basis, seed)
        paths.append(write_csv(tables[basis], tmp_path / basis / "units.csv"))
    stem = tmp_path / "fig" / "drops"
    figure = draw("drops", {"units": paths}, stem)
    check_saved(stem, figure, DPI)
    check_labelled(figure.axes)
    assert len(figure.axes) == 4
    curve = figure.axes[0]
    lines = {line.get_label(): line for line in curve.get_lines() if line.get_label() in tables}
    assert set(lines) == {"unit", "rot1", "rot2"}
    expected = np.sort(tables["rot1"]["overall_drop"].to_numpy())[::-1]
    np.testing.assert_allclose(lines["rot1"].get_ydata(), expected)
    assert lines["unit"].get_linestyle() == "-" and lines["rot1"].get_linestyle() == "--"
    legend = [t.get_text() for t in figure.axes[2].get_legend().get_texts()]
    assert legend == ["unit", "rotated (2 bases)"]
    assert "plain, features.relu5" in figure.get_suptitle()


def test_drops_histogram_shows_percent_of_units() -> None:
    table = units_table("l", "unit", 0)
    figure = drops_figure({"unit": table})
    (polygon,) = figure.axes[3].patches  # M_u histogram: one stepfilled polygon
    counts, _ = np.histogram(table["max_class_drop"], bins=30)
    assert polygon.get_xy()[:, 1].max() == pytest.approx(100.0 * counts.max() / N_UNITS)


# ---------------------------------------------------------------------------------------------
# 2. Examples.

LABELS = [LabelDef(1, "red", "color"), LabelDef(2, "box", "object")]


@pytest.fixture
def concept_inputs(tmp_path: Path) -> dict[str, str]:
    """A 4-image Broden set, a concept store with 4x4 maps, and a concepts.h5 of the layer."""
    rng = np.random.default_rng(3)
    writer = BrodenWriter(tmp_path / "broden", LABELS)
    for k in range(4):
        picture = rng.integers(0, 255, (16, 12, 3), dtype=np.uint8)
        ids = np.zeros((16, 12), dtype=np.int32)
        ids[: 4 * (k + 1), :6] = 1
        writer.add(f"{k:03d}", picture, {"color": [ids]}, {})
    writer.close()
    maps = rng.normal(size=(4, N_UNITS, 4, 4)).astype(np.float32)
    store = tmp_path / "concept.h5"
    with h5py.File(store, "w") as f:
        f.attrs["layers"] = '["features.relu5"]'
        f.attrs["classes"] = "[]"
        f.create_dataset("labels", data=np.full(4, -1))
        f.create_dataset("logits", data=np.zeros((4, 2), dtype=np.float32))
        group = f.create_group("layers").create_group("features.relu5")
        group.create_dataset("maps", data=maps)
        group.create_dataset("mean", data=maps.mean(axis=(2, 3)))
        group.create_dataset("max", data=maps.max(axis=(2, 3)))
    concepts = tmp_path / "concepts.h5"
    top_images = np.array([rng.permutation(4) for _ in range(N_UNITS)])
    with h5py.File(concepts, "w") as f:
        f.create_dataset("thresholds", data=np.full(N_UNITS, 0.5))
        f.create_dataset("top_images", data=top_images)
        f.create_dataset("top_scores", data=np.ones((N_UNITS, 4)))
    units = units_table("features.relu5", "unit", 0)
    drops = pd.DataFrame(rng.normal(0, 2, (N_UNITS, len(CLASSES))), columns=CLASSES)
    drops.insert(0, "unit", np.arange(N_UNITS))
    return {
        "units": write_csv(units, tmp_path / "units.csv"),
        "class_drops": write_csv(drops, tmp_path / "class_drops.csv"),
        "concepts": str(concepts),
        "store": str(store),
        "broden": str(tmp_path / "broden"),
        "maps": maps,
        "top_images": top_images,
    }


def test_examples_figure(tmp_path: Path, concept_inputs: dict) -> None:
    i = concept_inputs
    stem = tmp_path / "fig" / "examples"
    inputs = {k: i[k] for k in ("units", "class_drops", "concepts", "store", "broden")}
    figure = draw("examples", inputs, stem, example_units=2, example_images=3)
    check_saved(stem, figure, DPI)
    units = pd.read_csv(i["units"])
    drops = pd.read_csv(i["class_drops"])
    chosen = example_units(units, 2)
    assert chosen == list(units.sort_values("max_class_drop", ascending=False)["unit"][:2])
    bars = [ax for ax in figure.axes if ax.get_xlabel()]
    check_labelled(bars)
    assert len(bars) == 2 and len(figure.axes) == 2 * (1 + 3)
    for ax, unit in zip(bars, chosen, strict=True):
        expected = drops.set_index("unit").loc[unit].sort_values(ascending=False)[:5]
        assert [t.get_text() for t in ax.get_yticklabels()] == list(expected.index)
        assert set(expected.index) <= set(CLASSES)
        widths = [patch.get_width() for patch in ax.patches]
        np.testing.assert_allclose(widths, expected.to_numpy())
    titles = [sub.get_suptitle() for sub in figure.subfigs]
    for title, unit in zip(titles, chosen, strict=True):
        row = units.set_index("unit").loc[unit]
        assert f"unit {unit}:" in title and row["concept"] in title
        assert f"IoU {row['iou']:.3f}" in title
    # the first image of the first unit: its picture and the torch-upsampled mask overlay
    unit, row = chosen[0], int(i["top_images"][chosen[0]][0])
    image_axes = figure.axes[1]
    picture, tint = [im.get_array() for im in image_axes.get_images()]
    with Image.open(Path(i["broden"]) / "images" / f"{row:03d}.png") as png:
        np.testing.assert_array_equal(picture, np.asarray(png.convert("RGB")))
    upsampled = F.interpolate(
        torch.from_numpy(i["maps"][row, unit])[None, None],
        size=(16, 12),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    np.testing.assert_array_equal(np.asarray(tint)[..., 3] > 0, upsampled > 0.5)
    assert image_axes.get_title() == f"image {row}"


def test_most_hurt_classes_orders_and_breaks_ties_by_column() -> None:
    drops = pd.DataFrame({"unit": [0, 1], "a": [1.0, 0.0], "b": [3.0, 0.0], "c": [3.0, -1.0]})
    assert list(most_hurt_classes(drops, 0, 2).index) == ["b", "c"]
    assert list(most_hurt_classes(drops, 1, 5).index) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="unit 7"):
        most_hurt_classes(drops, 7)
    # the units table's own order (ties broken by probability drop) wins when it is given
    assert list(hurt_classes(drops, 0, 2, "c;b;a").index) == ["c", "b"]
    assert list(hurt_classes(drops, 0, 2, float("nan")).index) == ["b", "c"]
    np.testing.assert_allclose(hurt_classes(drops, 1, 5, "c;a").to_numpy(), [-1.0, 0.0])


# ---------------------------------------------------------------------------------------------
# 3. Attribute scatter grid.


def correlation_rows(layer: str, attributes: list[str], seed: int) -> pd.DataFrame:
    """A correlations.csv-like table with distinct rho per (attribute, target)."""
    rng = np.random.default_rng(seed)
    rows = []
    for attribute in attributes:
        for target in ("overall_drop", "max_class_drop"):
            rows.append(
                {
                    "model": "plain",
                    "layer": layer,
                    "basis": "unit",
                    "attribute": attribute,
                    "target": target,
                    "spearman": rng.uniform(-0.99, 0.99),
                    "spearman_p": rng.uniform(0, 0.2),
                    "n_units": N_UNITS,
                }
            )
    return pd.DataFrame(rows)


ATTRIBUTES = ["l1_in", "l1_in_bn", "l1_out", "selectivity", "class_correlation", "iou"]


def test_attributes_figure(tmp_path: Path) -> None:
    units = units_table("features.relu5", "unit", 0)
    units["active_fraction"] = np.nan  # a second NaN-only attribute
    correlations = correlation_rows("features.relu5", [*ATTRIBUTES, "mean_activation"], 1)
    stem = tmp_path / "attributes"
    inputs = {
        "units": write_csv(units, tmp_path / "units.csv"),
        "correlations": write_csv(correlations, tmp_path / "correlations.csv"),
    }
    figure = draw("attributes", inputs, stem)
    check_saved(stem, figure, DPI)
    check_labelled(figure.axes)
    kept = ["l1_in", "l1_in_bn", "selectivity", "class_correlation", "iou", "mean_activation"]
    assert len(figure.axes) == 2 * len(kept)
    xlabels = [ax.get_xlabel() for ax in figure.axes]
    assert not any("outgoing" in x or "active fraction" in x for x in xlabels)
    for k, ax in enumerate(figure.axes):
        attribute = kept[k // 2]
        target = ("overall_drop", "max_class_drop")[k % 2]
        row = correlations[
            (correlations["attribute"] == attribute) & (correlations["target"] == target)
        ].iloc[0]
        annotation = " ".join(t.get_text() for t in ax.texts)
        assert f"ρ = {row['spearman']:.2f}," in annotation, (attribute, target, annotation)
        assert f"n = {N_UNITS}" in annotation
        x, y = ax.collections[0].get_offsets().T
        np.testing.assert_allclose(x, units[attribute])
        np.testing.assert_allclose(y, units[target])


# ---------------------------------------------------------------------------------------------
# 4. Correlation heatmap.


def test_correlations_heatmap(tmp_path: Path) -> None:
    tables = [correlation_rows(layer, ATTRIBUTES, k) for k, layer in enumerate(LAYERS)]
    tables[0].loc[tables[0]["attribute"] == "l1_out", "spearman"] = np.nan
    tables[1].loc[0, "spearman_p"] = 0.001
    paths = [write_csv(t, tmp_path / f"{k}.csv") for k, t in enumerate(tables)]
    stem = tmp_path / "correlations"
    figure = draw("correlations", {"correlations": paths}, stem, {"model": "plain"})
    check_saved(stem, figure, DPI)
    heatmap = figure.axes[0]
    check_labelled([heatmap])
    values = heatmap.get_images()[0].get_array()
    assert values.shape == (len(ATTRIBUTES), 2 * len(LAYERS))
    assert values.mask[ATTRIBUTES.index("l1_out"), :2].all()  # NaN cells: masked (grey)
    assert not values.mask[ATTRIBUTES.index("l1_out"), 2:].any()
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in heatmap.texts}
    assert (ATTRIBUTES.index("l1_out"), 0) not in cells
    first = tables[1].iloc[0]
    assert cells[(0, 2)].get_text() == f"{first['spearman']:.2f}*"
    assert [t.get_text() for t in heatmap.get_xticklabels()] == ["$D_u$", "$M_u$"] * 2
    (layer_axis,) = heatmap.child_axes  # layer names above their two columns
    assert [t.get_text() for t in layer_axis.get_xticklabels()] == LAYERS
    np.testing.assert_allclose(layer_axis.get_xticks(), [0.5, 2.5])


# ---------------------------------------------------------------------------------------------
# 5. Class prediction.


def prediction_rows(layer: str, seed: int) -> pd.DataFrame:
    """A class_prediction.csv-like table; outgoing_class undefined (NaN rates)."""
    rng = np.random.default_rng(seed)
    rows = []
    for attribute in ("selective_class", "correlated_class", "outgoing_class", "concept_class"):
        defined = attribute != "outgoing_class"
        top1 = rng.uniform(0, 0.5)
        rows.append(
            {
                "model": "plain",
                "layer": layer,
                "basis": "unit",
                "attribute": attribute,
                "top1_hit_rate": top1 if defined else np.nan,
                "top5_hit_rate": min(1.0, top1 + 0.3) if defined else np.nan,
                "chance_top1": 1 / 6,
                "chance_top5": 5 / 6,
                "permutation_top1": 0.17 if defined else np.nan,
                "permutation_top5": 0.8 if defined else np.nan,
                "permutation_p": 0.01,
                "n_units": N_UNITS,
                "n_excluded": 0,
            }
        )
    return pd.DataFrame(rows)


def test_class_prediction_figure(tmp_path: Path) -> None:
    tables = [prediction_rows(layer, k) for k, layer in enumerate(LAYERS)]
    paths = [write_csv(t, tmp_path / f"{k}.csv") for k, t in enumerate(tables)]
    stem = tmp_path / "class_prediction"
    figure = draw("class_prediction", {"predictions": paths}, stem, {"model": "plain"})
    check_saved(stem, figure, DPI)
    check_labelled(figure.axes)
    assert [ax.get_title() for ax in figure.axes] == LAYERS
    for ax, table in zip(figure.axes, tables, strict=True):
        defined = table.dropna(subset=["top1_hit_rate"])
        heights = sorted(patch.get_height() for patch in ax.patches)
        expected = 100 * np.concatenate([defined["top1_hit_rate"], defined["top5_hit_rate"]])
        np.testing.assert_allclose(heights, np.sort(expected))
        assert sum(t.get_text() == "n/a" for t in ax.texts) == 2  # outgoing: top-1 and top-5
        assert ax.get_ylim() == (0.0, 100.0)


# ---------------------------------------------------------------------------------------------
# 6. Rotation.


def test_rotation_figure(tmp_path: Path) -> None:
    paths, tables = [], []
    for layer in LAYERS:
        for seed, basis in enumerate(("unit", "rot1")):
            table = units_table(layer, basis, seed)
            if basis == "rot1":
                table["selectivity"] = np.nan  # not computed in rotated bases
            tables.append(table)
            paths.append(write_csv(table, tmp_path / layer / basis / "units.csv"))
    stem = tmp_path / "rotation"
    figure = draw("rotation", {"units": paths}, stem, {"model": "plain"})
    check_saved(stem, figure, DPI)
    check_labelled(figure.axes)
    assert len(figure.axes) == 3 * len(LAYERS)
    counts = figure.axes[2]
    heights = [patch.get_height() for patch in counts.patches]
    assert heights == [float(tables[0]["is_detector"].sum()), float(tables[1]["is_detector"].sum())]
    assert "n/a" in [t.get_text() for t in figure.axes[1].texts]  # rot1 selectivity


def test_detector_count_reads_booleans_strings_and_unknowns() -> None:
    assert detector_count(pd.Series([True, False, True])) == 2.0
    assert detector_count(pd.Series(["True", "False", np.nan])) == 1.0
    assert detector_count(pd.Series([" true", "FALSE", "", "maybe", 1.0])) == 2.0
    assert np.isnan(detector_count(pd.Series([np.nan, np.nan])))


def test_read_flag_tells_true_false_and_no_flag() -> None:
    assert [read_flag(v) for v in ("True", " false ", True, np.bool_(False), 1, 0.0)] == [
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    assert [read_flag(v) for v in ("", "yes", None, float("nan"), np.float64("nan"))] == [None] * 5


# ---------------------------------------------------------------------------------------------
# 7. Variants.


def baseline_table(correct: list[int], total: int) -> pd.DataFrame:
    """A baseline.csv-like table with per-class rows and the trailing overall row."""
    per_class = pd.DataFrame(
        {
            "class_index": np.arange(len(correct)),
            "class": CLASSES[: len(correct)],
            "n_images": total,
            "n_correct": correct,
        }
    )
    per_class["accuracy"] = 100 * per_class["n_correct"] / total
    overall = pd.DataFrame(
        {
            "class_index": [-1],
            "class": ["overall"],
            "n_images": [total * len(correct)],
            "n_correct": [sum(correct)],
            "accuracy": [0.0],
        }
    )
    return pd.concat([per_class, overall], ignore_index=True)


def test_variants_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the rule's inputs are paths under results/
    models = {"plain": LAYERS, "batchnorm": LAYERS, "other": ["layer4"]}
    unit_paths, baseline_paths = [], []
    for k, (model, layers) in enumerate(models.items()):
        for layer in layers:
            table = units_table(layer, "unit", k, model=model)
            unit_paths.append(write_csv(table, Path(f"results/{model}/{layer}/unit/units.csv")))
        baseline = baseline_table([40 + k, 45, 30], 50)
        baseline_paths.append(write_csv(baseline, Path(f"results/{model}/baseline.csv")))
    stem = tmp_path / "variants"
    inputs = {"units": unit_paths, "baselines": baseline_paths}
    figure = draw("variants", inputs, stem, {})
    check_saved(stem, figure, DPI)
    check_labelled(figure.axes)
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend[0] == f"plain ({100 * 115 / 150:.1f}%)"
    assert legend[1] == f"batchnorm ({100 * 116 / 150:.1f}%)"
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [*LAYERS, "layer4"]
    boxes = [patch for patch in ax.patches if isinstance(patch, PathPatch)]
    assert len(boxes) == 5  # two models in each shared layer, one alone
    assert boxes[0].get_facecolor()[:3] == boxes[2].get_facecolor()[:3]  # plain, both layers


def test_baseline_accuracy_ignores_the_overall_row() -> None:
    assert baseline_accuracy(baseline_table([10, 20], 40)) == pytest.approx(37.5)
    assert baseline_accuracy(baseline_table([10, 20], 40).iloc[:2]) == pytest.approx(37.5)


# ---------------------------------------------------------------------------------------------
# 8. Cumulative.


def cumulative_rows(seed: int) -> pd.DataFrame:
    """A cumulative.csv-like table: class drops grow with k for the top sets, not for random."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(CLASSES):
        for k in (1, 2, 4, 8):
            for selection, scale in (("top", 10.0), ("random", 1.0)):
                rows.append(
                    {
                        "class": name,
                        "class_index": c,
                        "k": k,
                        "selection": selection,
                        "units": "0",
                        "class_drop": scale * np.log2(2 * k) + rng.normal(),
                        "overall_drop": 0.1 * k + rng.normal(0, 0.05),
                    }
                )
    return pd.DataFrame(rows)


def test_cumulative_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the rule's inputs are paths under results/
    tables = [cumulative_rows(k) for k in range(len(LAYERS))]
    paths = [
        write_csv(t, Path(f"results/plain/{layer}/unit/cumulative.csv"))
        for layer, t in zip(LAYERS, tables, strict=True)
    ]
    stem = tmp_path / "cumulative"
    figure = draw("cumulative", {"tables": paths}, stem, {"model": "plain"})
    check_saved(stem, figure, DPI)
    check_labelled(figure.axes)
    ax = figure.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    top = tables[0][tables[0]["selection"] == "top"]
    median = top.groupby("k")["class_drop"].median().to_numpy()
    thick = [line for line in ax.get_lines() if line.get_linewidth() == pytest.approx(1.8)]
    assert any(np.allclose(line.get_ydata(), median) for line in thick)
    thin = [line for line in ax.get_lines() if line.get_linewidth() == pytest.approx(0.4)]
    assert len(thin) == len(CLASSES)
    assert [ax.get_title() for ax in figure.axes] == LAYERS  # layers read from the paths
    assert figure.get_suptitle() == "plain: cumulative ablation"
    with pytest.raises(ValueError, match="other/features.relu4/unit/cumulative.csv does not match"):
        draw(
            "cumulative", {"tables": [paths[0].replace("plain", "other")]}, stem, {"model": "plain"}
        )


# ---------------------------------------------------------------------------------------------
# Files: pixel size at the configured dpi, identical bytes on a rerun, legible fonts.


def table_figures() -> dict[str, Callable[[], Figure]]:
    """A builder of one figure of each table-only kind, in memory."""
    units = units_table("features.relu5", "unit", 0)
    both = pd.concat([units, units_table("features.relu5", "rot1", 1)], ignore_index=True)
    correlation_table = correlation_rows("features.relu5", ATTRIBUTES, 0)
    return {
        "drops": lambda: drops_figure({"unit": units}, title="plain, features.relu5"),
        "attributes": lambda: attributes.attributes_figure(units, correlation_table, title="t"),
        "correlations": lambda: correlations.correlations_figure(correlation_table),
        "class_prediction": lambda: class_prediction.class_prediction_figure(
            prediction_rows("l", 0)
        ),
        "rotation": lambda: rotation.rotation_figure(both),
        "variants": lambda: variants.variants_figure(units, {"plain": 95.25}),
        "cumulative": lambda: cumulative.cumulative_figure({"features.relu5": cumulative_rows(0)}),
    }


@pytest.mark.parametrize("kind", list(table_figures()))
def test_every_figure_is_paper_width_with_legible_fonts(kind: str) -> None:
    check_fonts(table_figures()[kind]())


def test_saved_png_has_figsize_times_dpi_pixels_and_reruns_are_identical(tmp_path: Path) -> None:
    figure = drops_figure({"unit": units_table("l", "unit", 0)})
    first = save_figure(figure, tmp_path / "a" / "drops", 150)
    with Image.open(first[0]) as image:
        assert image.size == (1050, 750)  # 7 x 5 in at 150 dpi
    second = save_figure(
        drops_figure({"unit": units_table("l", "unit", 0)}), tmp_path / "b" / "drops", 150
    )
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_examples_figure_of_a_token_layer(tmp_path: Path, concept_inputs: dict) -> None:
    """A ViT block's store (1 class token + 4 x 4 patch tokens): the example masks are the patch
    tokens laid on their grid by hand, upsampled to the picture and thresholded."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.models.vision_transformer import VisionTransformer

    from unitablation.extraction import extract_activations

    i = concept_inputs
    torch.manual_seed(0)
    model = VisionTransformer(32, 8, 2, 2, N_UNITS, 24, num_classes=3).eval()
    block = "encoder.layers.encoder_layer_0"
    images = torch.randn(4, 3, 32, 32)
    captured = {}
    model.get_submodule(block).register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("tokens", out.clone())
    )
    with torch.no_grad():
        model(images)
    store = tmp_path / "tokens.h5"
    loader = DataLoader(TensorDataset(images, torch.full((4,), -1)), batch_size=4)
    paths = [f"{k:03d}.png" for k in range(4)]
    extract_activations(model, [block], loader, store, torch.device("cpu"), {}, paths=paths)
    stem = tmp_path / "fig" / "examples"
    inputs = {k: i[k] for k in ("units", "class_drops", "concepts", "broden")}
    figure = draw(
        "examples",
        {**inputs, "store": str(store)},
        stem,
        {"model": "plain", "layer": block},
        example_units=2,
        example_images=3,
    )
    check_saved(stem, figure, DPI)
    unit = example_units(pd.read_csv(i["units"]), 2)[0]
    row = int(i["top_images"][unit][0])
    tokens = captured["tokens"][row, :, unit]  # (1 + 16,)
    grid = torch.tensor([[float(tokens[1 + 4 * r + c]) for c in range(4)] for r in range(4)])
    upsampled = F.interpolate(grid[None, None], size=(16, 12), mode="bilinear")[0, 0].numpy()
    _, tint = [im.get_array() for im in figure.axes[1].get_images()]
    assert (upsampled > 0.5).any() and not (upsampled > 0.5).all()
    np.testing.assert_array_equal(np.asarray(tint)[..., 3] > 0, upsampled > 0.5)


# ---------------------------------------------------------------------------------------------
# The registry: what the rules, the report and the tests read.


def test_registry_finds_every_figure_module_of_the_package() -> None:
    """Every module with a SPEC is registered, found by listing the package's files here."""
    folder = Path(figures.__file__).parent
    declaring = sorted(
        path.stem for path in folder.glob("*.py") if "\nSPEC = FigureSpec(" in path.read_text()
    )
    assert declaring == sorted(spec.name for spec in reg.figures())
    assert {m.name for m in pkgutil.iter_modules(figures.__path__)} >= {"style", "registry"}
    scopes = {spec.name: spec.scope for spec in reg.figures()}
    assert scopes == {
        "attributes": "layer",
        "class_prediction": "model",
        "correlations": "model",
        "cumulative": "model",
        "drops": "layer",
        "examples": "layer",
        "rotation": "model",
        "variants": "study",
    }
    with pytest.raises(KeyError, match="unknown figure 'nope'; registered: attributes"):
        reg.figure("nope")


def test_every_entry_reads_config_keys_of_the_default_config() -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for spec in reg.figures():
        settings = reg.job_settings(spec, config)
        assert settings["figures.dpi"] == config["figures"]["dpi"]
        assert set(settings) == set(spec.config_keys), spec.name
        assert spec.caption.strip(), spec.name
    with pytest.raises(KeyError, match="figure examples reads config key figures.example_units"):
        reg.job_settings(reg.figure("examples"), {"figures": {"dpi": 100}})


def study(concept_set: str | None = "results/world/broden") -> reg.Study:
    """Two models (the second with one layer), two bases."""
    return reg.Study(
        models=("plain", "bn"),
        layers={"plain": ("l4", "l5"), "bn": ("l5",)},
        bases=("unit", "rot7"),
        concept_sets={"plain": concept_set, "bn": None},
    )


def test_inputs_expand_the_placeholders_that_are_not_wildcards_in_order() -> None:
    drops = reg.job_inputs(reg.figure("drops"), {"model": "plain", "layer": "l5"}, study())
    assert drops == {
        "units": ["results/plain/l5/unit/units.csv", "results/plain/l5/rot7/units.csv"]
    }
    rotation = reg.job_inputs(reg.figure("rotation"), {"model": "plain"}, study())
    assert rotation["units"] == [
        f"results/plain/{layer}/{basis}/units.csv"
        for layer in ("l4", "l5")
        for basis in ("unit", "rot7")
    ]
    variants = reg.job_inputs(reg.figure("variants"), {}, study())
    assert variants["units"] == [
        "results/plain/l4/unit/units.csv",
        "results/plain/l5/unit/units.csv",
        "results/bn/l5/unit/units.csv",
    ]
    assert variants["baselines"] == ["results/plain/baseline.csv", "results/bn/baseline.csv"]
    attributes = reg.job_inputs(reg.figure("attributes"), {"model": "bn", "layer": "l5"}, study())
    assert attributes == {
        "units": "results/bn/l5/unit/units.csv",
        "correlations": "results/bn/l5/unit/correlations.csv",
    }


def test_concept_inputs_only_where_the_model_has_a_concept_set() -> None:
    spec = reg.figure("examples")
    with_set = reg.job_inputs(spec, {"model": "plain", "layer": "l4"}, study())
    assert with_set["broden"] == "results/world/broden"
    assert with_set["store"] == "results/plain/activations/concept/l4.h5"
    assert with_set["concepts"] == "results/plain/l4/unit/concepts.h5"
    without = reg.job_inputs(spec, {"model": "bn", "layer": "l5"}, study())
    assert set(without) == {"units", "class_drops"}


def test_outputs_are_the_paths_users_rely_on() -> None:
    assert reg.outputs(reg.figure("examples"), study()) == [
        f"results/figures/{m}/{layer}/examples.{suffix}"
        for m, layer in (("plain", "l4"), ("plain", "l5"), ("bn", "l5"))
        for suffix in ("png", "pdf")
    ]
    assert reg.outputs(reg.figure("cumulative"), study()) == [
        "results/figures/plain/cumulative.png",
        "results/figures/plain/cumulative.pdf",
        "results/figures/bn/cumulative.png",
        "results/figures/bn/cumulative.pdf",
    ]
    assert reg.outputs(reg.figure("variants"), study()) == [
        "results/figures/comparison/variants.png",
        "results/figures/comparison/variants.pdf",
    ]


def test_caption_names_the_job_and_specs_are_checked() -> None:
    text = reg.caption(reg.figure("drops"), {"model": "plain", "layer": "features.relu5"})
    assert "layer **features.relu5** of model **plain**" in text and "{" not in text
    with pytest.raises(ValueError, match="figure bad: config_keys must name figures.dpi"):
        reg.FigureSpec(name="bad", scope="layer", inputs={}, config_keys=())
    with pytest.raises(ValueError, match=r"figure bad: unknown placeholders \{'split'\}"):
        reg.FigureSpec(name="bad", scope="model", inputs={"x": "results/{model}/{split}.csv"})
    with pytest.raises(ValueError, match="figure bad: unknown scope 'run'"):
        reg.FigureSpec(name="bad", scope="run", inputs={})  # type: ignore[arg-type]


# One job per scope's wildcards draws all of that scope's figures (workflow/rules/figures.smk).


def test_group_inputs_are_each_figures_own_under_its_name() -> None:
    wildcards = {"model": "plain", "layer": "l4"}
    group = reg.group_inputs("layer", wildcards, study())
    own = {spec.name: reg.job_inputs(spec, wildcards, study()) for spec in reg.figures("layer")}
    assert len(group) == sum(len(inputs) for inputs in own.values())
    for name, inputs in own.items():
        assert reg.figure_inputs(name, group) == inputs
    assert group["drops__units"] == [
        "results/plain/l4/unit/units.csv",
        "results/plain/l4/rot7/units.csv",
    ]
    assert reg.figure_inputs("variants", reg.group_inputs("study", {}, study())) == (
        reg.job_inputs(reg.figure("variants"), {}, study())
    )


def test_group_settings_are_the_union_and_each_figure_gets_its_own() -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for scope in ("layer", "model", "study"):
        union = reg.group_settings(scope, config)
        keys = [key for spec in reg.figures(scope) for key in spec.config_keys]
        assert list(union) == sorted(set(keys)), scope
        for spec in reg.figures(scope):
            assert reg.figure_settings(spec.name, union) == reg.job_settings(spec, config)
    assert "figures.example_units" in reg.group_settings("layer", config)
    assert "figures.example_units" not in reg.figure_settings(
        "drops", reg.group_settings("layer", config)
    )


def test_group_captions_fill_each_figures_wildcards() -> None:
    wildcards = {"model": "plain", "layer": "features.relu5"}
    captions = reg.group_captions("layer", wildcards)
    assert list(captions) == [spec.name for spec in reg.figures("layer")]
    assert captions["drops"] == reg.caption(reg.figure("drops"), wildcards)
    assert "layer **features.relu5** of model **plain**" in captions["drops"]


def test_every_figure_has_its_report_caption_template() -> None:
    """The report shows each figure's caption through workflow/report/figures/<name>.rst."""
    folder = ROOT / "workflow" / "report" / "figures"
    assert sorted(path.stem for path in folder.glob("*.rst")) == sorted(
        spec.name for spec in reg.figures()
    )
    for spec in reg.figures():
        text = (folder / f"{spec.name}.rst").read_text()
        assert text == '{{ snakemake.params.captions["' + spec.name + '"] }}\n', spec.name


def test_group_job_draws_each_figure_with_its_own_inputs_settings_and_log(
    tmp_path: Path,
) -> None:
    paths = [
        write_csv(units_table("features.relu5", basis, seed), tmp_path / basis / "units.csv")
        for seed, basis in enumerate(("unit", "rot1"))
    ]
    inputs = {"drops__units": paths, "attributes__units": str(tmp_path / "absent.csv")}
    settings = {"figures.dpi": DPI, "figures.example_units": 3}
    outputs = {"drops_png": str(tmp_path / "fig" / "drops.png")}
    logs = {"drops": str(tmp_path / "logs" / "drops.log")}
    wildcards = {"model": "plain", "layer": "features.relu5"}
    figure_script().draw_group(["drops"], inputs, settings, wildcards, outputs, logs)
    assert (tmp_path / "fig" / "drops.png").stat().st_size > 0
    assert (tmp_path / "fig" / "drops.pdf").read_bytes().startswith(b"%PDF")
    log = (tmp_path / "logs" / "drops.log").read_text()
    assert "figure drops (layer scope), settings {'figures.dpi': 50}" in log


def test_figures_and_masks_import_without_torch() -> None:
    """The analysis env has no torch: every figure module and the mask module import without."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from unitablation.figures import registry\n"
        "from unitablation import masks\n"
        "print(len(registry.figures()), masks.unit_mask([[0.0, 1.0]], (1, 4), 0.5).tolist())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT / "workflow",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == f"{len(reg.figures())} [[False, False, True, True]]"


def test_saving_a_pdf_keeps_font_subsetting_records_out_of_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    save_figure(drops_figure({"unit": units_table("l", "unit", 0)}), tmp_path / "drops", DPI)
    assert (tmp_path / "drops.pdf").stat().st_size > 0
    assert not [r for r in caplog.records if r.name.startswith("fontTools")]
    assert logging.getLogger("fontTools").level == logging.NOTSET  # restored
