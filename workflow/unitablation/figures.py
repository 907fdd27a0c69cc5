"""Paper figures: matplotlib Figures drawn from the pipeline's tables, saved as PNG and PDF.

Every plotting function takes DataFrames or arrays and returns a `matplotlib.figure.Figure`
built without pyplot (no global figure registry); fonts and sizes come from `STYLE`, applied
only while a figure is drawn. `save_figure` writes `<stem>.png` and `<stem>.pdf` atomically and
leaves out the metadata that changes between runs, so rerunning gives identical bytes.
Drops are in percentage points (pp), accuracies and hit rates in percent.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from unitablation.concept_status import NO_CONCEPT_SET, concepts_measured
from unitablation.store import atomic_path

PAPER_WIDTH = 7.0  # inches: a two-column paper's text width
MIN_FONT_SIZE = 8.0  # points, at PAPER_WIDTH
STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "figure.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.2,
    "pdf.fonttype": 42,  # TrueType: text stays text in the PDF
    "image.interpolation": "nearest",
}
#: Metadata left out of the files so that two runs give the same bytes.
PNG_METADATA: dict[str, Any] = {"Software": None}
PDF_METADATA: dict[str, Any] = {"CreationDate": None, "Producer": None, "Creator": None}

TARGETS: tuple[str, ...] = ("overall_drop", "max_class_drop")
TARGET_LABELS: dict[str, str] = {
    "overall_drop": "overall drop $D_u$ (pp)",
    "max_class_drop": "max class drop $M_u$ (pp)",
}
TARGET_SHORT: dict[str, str] = {"overall_drop": "$D_u$", "max_class_drop": "$M_u$"}
#: Numeric attributes of the scatter grid, in row order.
SCATTER_ATTRIBUTES: tuple[str, ...] = (
    "l1_in",
    "l1_in_bn",
    "l1_out",
    "selectivity",
    "class_correlation",
    "iou",
    "mean_activation",
    "active_fraction",
)
ATTRIBUTE_LABELS: dict[str, str] = {
    "l1_in": "incoming L1 norm",
    "l1_in_bn": "incoming L1 norm (BN folded)",
    "l1_out": "outgoing L1 norm",
    "selectivity": "class selectivity SI",
    "class_correlation": "class correlation (max r)",
    "iou": "best concept IoU",
    "mean_activation": "mean activation",
    "active_fraction": "active fraction of images",
    "activation_variance": "activation variance",
}
CLASS_ATTRIBUTES: tuple[str, ...] = (
    "selective_class",
    "correlated_class",
    "outgoing_class",
    "concept_class",
)
CLASS_ATTRIBUTE_LABELS: dict[str, str] = {
    "selective_class": "selective",
    "correlated_class": "correlated",
    "outgoing_class": "outgoing",
    "concept_class": "concept",
}
UNIT_COLOR = "#1f77b4"
LIGHT = "#9ecae1"  # light blue: top-5 bars
ROTATED_COLORS: tuple[str, ...] = ("#d95f02", "#e6883e", "#f0ab73", "#f6c9a0")
TOP_COLOR = "#c0392b"
RANDOM_COLOR = "#555555"
MASK_COLOR = (0.0, 1.0, 1.0)  # cyan: visible on most natural and generated images
SIGNIFICANCE = 0.05  # p below this gets a star in the heatmap

P = ParamSpec("P")


def styled(build: Callable[P, Figure]) -> Callable[P, Figure]:
    """Run a figure builder under STYLE and fix its tick label sizes (ticks are made lazily)."""

    @functools.wraps(build)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            figure = build(*args, **kwargs)
            for axes in figure.axes:
                axes.tick_params(labelsize=STYLE["xtick.labelsize"])
        return figure

    return wrapper


def save_figure(figure: Figure, stem: str | Path, dpi: float) -> tuple[Path, Path]:
    """Write `<stem>.png` (at `dpi`) and `<stem>.pdf`, each via a temporary name then rename."""
    stem = Path(stem)
    paths = (stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf"))
    with matplotlib.rc_context(STYLE):
        for path, metadata in zip(paths, (PNG_METADATA, PDF_METADATA), strict=True):
            with atomic_path(path) as temporary:
                figure.savefig(temporary, format=path.suffix[1:], dpi=dpi, metadata=metadata)
    return paths


# ---------------------------------------------------------------------------------------------
# Small helpers.


def numeric(values: pd.Series | Sequence[float]) -> np.ndarray:
    """Values as float64, anything non-numeric as NaN."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)


def finite(values: pd.Series | Sequence[float]) -> np.ndarray:
    """The finite values, in order."""
    array = numeric(values)
    return array[np.isfinite(array)]


def format_p(p: float) -> str:
    """A p-value for an annotation: two significant digits, scientific when small."""
    if not np.isfinite(p):
        return "n/a"
    if p == 0:
        return "< 1e-300"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.2g}"


def basis_style(basis: str, rotated_index: int) -> dict[str, Any]:
    """Line style of a basis: the unit basis solid blue, rotated bases dashed and lighter."""
    if basis == "unit":
        return {"color": UNIT_COLOR, "linestyle": "-", "linewidth": 1.6, "zorder": 3}
    color = ROTATED_COLORS[rotated_index % len(ROTATED_COLORS)]
    return {"color": color, "linestyle": "--", "linewidth": 1.1, "alpha": 0.9, "zorder": 2}


def basis_color(basis: str) -> str:
    """Fill colour of a basis in box and bar plots."""
    return UNIT_COLOR if basis == "unit" else ROTATED_COLORS[0]


def ordered_bases(bases: Sequence[str]) -> list[str]:
    """Bases in first-seen order with the unit basis first."""
    seen = list(dict.fromkeys(bases))
    return (["unit"] if "unit" in seen else []) + [b for b in seen if b != "unit"]


def in_order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """Distinct values: those in `preferred` in its order, then the rest in first-seen order."""
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def suptitle(figure: Figure, title: str | None) -> None:
    """Set the figure title when one is given."""
    if title:
        figure.suptitle(title)


def empty_note(axes: Axes, text: str = "no data") -> None:
    """Write a centred note on an axes that has nothing to plot."""
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", color="0.4")


def integer_log2_axis(axes: Axes, ks: Sequence[int]) -> None:
    """A log2 x axis with the given k values as plain-integer ticks."""
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_locator(ticker.FixedLocator(sorted(set(ks))))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_locator(ticker.NullLocator())


# ---------------------------------------------------------------------------------------------
# 1. Sorted drops and their histograms, unit vs rotated bases.


@styled
def drops_figure(tables: Mapping[str, pd.DataFrame], title: str | None = None) -> Figure:
    """Sorted D_u and M_u per basis (top) and their histograms, unit vs rotated (bottom)."""
    figure = Figure(figsize=(PAPER_WIDTH, 5.0), layout="constrained")
    axes = figure.subplots(2, 2)
    bases = ordered_bases(list(tables))
    rotated = [b for b in bases if b != "unit"]
    for column, target in enumerate(TARGETS):
        curve, histogram = axes[0, column], axes[1, column]
        values = {b: np.sort(finite(tables[b][target]))[::-1] for b in bases}
        for basis in bases:
            index = rotated.index(basis) if basis in rotated else 0
            ranks = np.arange(1, len(values[basis]) + 1)
            curve.plot(ranks, values[basis], label=basis, **basis_style(basis, index))
        curve.axhline(0.0, color="0.6", linewidth=0.6, zorder=1)
        curve.set_xlabel("unit rank (largest drop first)")
        curve.set_ylabel(TARGET_LABELS[target])
        curve.set_title(f"Sorted {TARGET_SHORT[target]} per basis")
        if bases:
            curve.legend(frameon=False)
        groups = {"unit": values.get("unit", np.empty(0))}
        if rotated:
            pooled = np.concatenate([values[b] for b in rotated])
            groups[f"rotated ({len(rotated)} bases)"] = pooled
        everything = np.concatenate(list(groups.values()))
        if everything.size:
            edges = np.histogram_bin_edges(everything, bins=30)
            for name, data in groups.items():
                if not data.size:
                    continue
                weights = np.full(data.size, 100.0 / data.size)
                unit = name == "unit"
                histogram.hist(
                    data,
                    bins=edges,
                    weights=weights,
                    histtype="stepfilled" if unit else "step",
                    color=UNIT_COLOR if unit else ROTATED_COLORS[0],
                    alpha=0.55 if unit else 1.0,
                    linestyle="-" if unit else "--",
                    linewidth=1.2,
                    label=name,
                )
            histogram.legend(frameon=False)
        else:
            empty_note(histogram)
        histogram.set_xlabel(TARGET_LABELS[target])
        histogram.set_ylabel("units (% of basis)")
        histogram.set_title(f"Distribution of {TARGET_SHORT[target]}")
    suptitle(figure, title)
    return figure


# ---------------------------------------------------------------------------------------------
# 2. Example units: most-hurt classes and top-activating images with the unit's mask.


@dataclass(frozen=True)
class ExampleImage:
    """A concept-set image with one unit's thresholded activation mask at image resolution."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool
    index: int  # row of the image in the concept set
    score: float = float("nan")  # the ranking score of the image for the unit


def example_units(units: pd.DataFrame, count: int) -> list[int]:
    """The `count` units with the largest max class drop (ties: smaller unit index first)."""
    table = pd.DataFrame({"unit": units["unit"], "drop": numeric(units["max_class_drop"])})
    table = table[np.isfinite(table["drop"])]
    table = table.sort_values(["drop", "unit"], ascending=[False, True], kind="stable")
    return [int(u) for u in table["unit"].head(count)]


def most_hurt_classes(class_drops: pd.DataFrame, unit: int, count: int = 5) -> pd.Series:
    """A unit's `count` largest class drops (pp), largest first (ties in column order)."""
    rows = class_drops[class_drops["unit"] == unit]
    if rows.empty:
        raise ValueError(f"class drop table has no row for unit {unit}")
    row = rows.drop(columns="unit").iloc[0]
    drops = pd.Series(numeric(row), index=[str(c) for c in row.index]).dropna()
    order = np.argsort(-drops.to_numpy(), kind="stable")
    return drops.iloc[order[:count]]


def hurt_classes(
    class_drops: pd.DataFrame, unit: int, count: int = 5, listed: object = None
) -> pd.Series:
    """A unit's most-hurt classes with their drops (pp): the units table's `listed` order
    (top5_hurt_classes, ";"-joined, ties already broken by probability drop) when given,
    else `most_hurt_classes`."""
    drops = most_hurt_classes(class_drops, unit, len(class_drops.columns))
    names = [n.strip() for n in listed.split(";")] if isinstance(listed, str) else []
    names = [n for n in names if n in drops.index][:count]
    return drops.loc[names] if names else drops.iloc[:count]


def bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) interpolation matrix of torch's bilinear, align_corners=False."""
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    source = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    fraction = source - low
    rows = np.arange(size_out)
    np.add.at(weights, (rows, low), 1.0 - fraction)
    np.add.at(weights, (rows, high), fraction)
    return weights


def bilinear_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (h, w) map resized to `size` as torch's bilinear upsampling (align_corners=False)."""
    array = np.asarray(array, dtype=np.float64)
    if array.shape == tuple(size):
        return array
    rows = bilinear_weights(array.shape[0], size[0])
    columns = bilinear_weights(array.shape[1], size[1])
    return rows @ array @ columns.T


def unit_mask(activation_map: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Network Dissection mask of one map: bilinearly upsampled to `size`, then > threshold."""
    return bilinear_resize(activation_map, size) > threshold


def overlay(mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An (H, W, 4) RGBA layer that tints the masked pixels, transparent elsewhere."""
    layer = np.zeros(mask.shape + (4,), dtype=np.float64)
    layer[mask, :3] = MASK_COLOR
    layer[mask, 3] = alpha
    return layer


def _concept_text(row: pd.Series) -> str:
    """'best concept: name (category), IoU 0.123' or a note that the unit has none."""
    concept = row.get("concept")
    iou = float(numeric([row.get("iou")])[0])
    if not np.isfinite(iou):
        return NO_CONCEPT_SET
    if not isinstance(concept, str) or not concept:
        return "no concept"
    category = row.get("concept_category")
    category = f" ({category})" if isinstance(category, str) and category else ""
    return f"best concept: {concept}{category}, IoU {iou:.3f}"


@styled
def examples_figure(
    units: pd.DataFrame,
    class_drops: pd.DataFrame,
    images: Mapping[int, Sequence[ExampleImage]],
    n_classes: int = 5,
    title: str | None = None,
) -> Figure:
    """One row per unit (keys of `images`, in order): its most-hurt classes beside its images."""
    chosen = list(images)
    n_images = max([1, *(len(v) for v in images.values())])
    row_height = max(1.55, 0.22 * n_classes + 0.75)
    figure = Figure(
        figsize=(PAPER_WIDTH, row_height * max(1, len(chosen)) + (0.3 if title else 0.0)),
        layout="constrained",
    )
    if not chosen:
        axes = figure.subplots()
        empty_note(axes, "no unit has a finite max class drop")
        axes.set_xlabel("class drop $d_{uc}$ (pp)")
        axes.set_ylabel("most-hurt class")
        suptitle(figure, title)
        return figure
    rows = figure.subfigures(len(chosen), 1, squeeze=False)[:, 0]
    by_unit = units.set_index(units["unit"].astype(int))
    for subfigure, unit in zip(rows, chosen, strict=True):
        row = by_unit.loc[unit]
        drops = hurt_classes(class_drops, unit, n_classes, row.get("top5_hurt_classes"))
        subfigure.suptitle(
            f"unit {unit}: {_concept_text(row)}; "
            f"$D_u$ = {float(numeric([row['overall_drop']])[0]):.1f} pp, "
            f"$M_u$ = {float(numeric([row['max_class_drop']])[0]):.1f} pp",
            fontsize=9,
        )
        axes = subfigure.subplots(1, 1 + n_images, width_ratios=[1.9] + [1.0] * n_images)
        bars = axes[0]
        positions = np.arange(len(drops))
        bars.barh(positions, drops.to_numpy(), color=TOP_COLOR, height=0.7)
        bars.set_yticks(positions, labels=list(drops.index))
        bars.invert_yaxis()
        bars.axvline(0.0, color="0.3", linewidth=0.6)
        top = max(float(drops.max()) if len(drops) else 0.0, 1.0)
        low = min(float(drops.min()) if len(drops) else 0.0, 0.0)
        bars.set_xlim(low, top * 1.3)
        for y, value in zip(positions, drops.to_numpy(), strict=True):
            bars.text(max(value, 0.0) + 0.02 * top, y, f"{value:.1f}", va="center", fontsize=8)
        bars.set_xlabel("class drop $d_{uc}$ (pp)")
        bars.set_ylabel("most-hurt class")
        for k, image_axes in enumerate(axes[1:]):
            image_axes.set_axis_off()
            if k >= len(images[unit]):
                if k == 0 and not np.isfinite(float(numeric([row.get("iou")])[0])):
                    image_axes.text(
                        0.5,
                        0.5,
                        f"{NO_CONCEPT_SET}:\nno concept images",
                        ha="center",
                        va="center",
                        transform=image_axes.transAxes,
                        fontsize=8,
                    )
                continue
            example = images[unit][k]
            image_axes.imshow(example.image)
            image_axes.imshow(overlay(example.mask))
            if example.mask.any() and not example.mask.all():
                image_axes.contour(
                    example.mask.astype(np.float64),
                    levels=[0.5],
                    colors=[MASK_COLOR],
                    linewidths=0.8,
                )
            image_axes.set_title(f"image {example.index}", fontsize=8)
    suptitle(figure, title)
    return figure


# ---------------------------------------------------------------------------------------------
# 3. Attribute vs drop scatter grid.


def scatter_attributes(
    units: pd.DataFrame, attributes: Sequence[str] = SCATTER_ATTRIBUTES
) -> list[str]:
    """The attributes present in the table with at least one finite value, in order."""
    return [a for a in attributes if a in units and np.isfinite(numeric(units[a])).any()]


def correlation_row(correlations: pd.DataFrame, attribute: str, target: str) -> pd.Series | None:
    """The correlation table's row of (attribute, target) in the unit basis, if any."""
    table = correlations
    if "basis" in table:
        table = table[table["basis"] == "unit"]
    rows = table[(table["attribute"] == attribute) & (table["target"] == target)]
    return None if rows.empty else rows.iloc[0]


def correlation_text(row: pd.Series | None) -> str:
    """The annotation of a scatter panel: Spearman rho, its p-value and the number of units."""
    if row is None:
        return "ρ n/a"
    rho = float(numeric([row["spearman"]])[0])
    p = float(numeric([row["spearman_p"]])[0])
    n = row.get("n_units")
    rho_text = f"{rho:.2f}" if np.isfinite(rho) else "n/a"
    n_text = f", n = {int(n)}" if n is not None and np.isfinite(numeric([n])[0]) else ""
    return f"ρ = {rho_text}, p = {format_p(p)}{n_text}"


@styled
def attributes_figure(
    units: pd.DataFrame,
    correlations: pd.DataFrame,
    attributes: Sequence[str] = SCATTER_ATTRIBUTES,
    title: str | None = None,
) -> Figure:
    """Scatter of each attribute with finite values (rows) against D_u and M_u (columns)."""
    present = scatter_attributes(units, attributes)
    if "iou" in attributes and "iou" in units and not concepts_measured(units):
        title = f"{title or ''}{' ' if title else ''}(concept IoU: {NO_CONCEPT_SET})"
    height = 1.2 * max(1, len(present)) + (0.55 if title else 0.3)
    figure = Figure(figsize=(PAPER_WIDTH, height), layout="constrained")
    if not present:
        axes = figure.subplots()
        empty_note(axes, "no attribute has a finite value")
        axes.set_xlabel("attribute")
        axes.set_ylabel("drop (pp)")
        suptitle(figure, title)
        return figure
    grid = figure.subplots(len(present), len(TARGETS), squeeze=False)
    for r, attribute in enumerate(present):
        x = numeric(units[attribute])
        for c, target in enumerate(TARGETS):
            axes = grid[r, c]
            y = numeric(units[target])
            keep = np.isfinite(x) & np.isfinite(y)
            axes.scatter(x[keep], y[keep], s=7, alpha=0.6, color=UNIT_COLOR, linewidths=0)
            axes.text(
                0.02,
                0.95,
                correlation_text(correlation_row(correlations, attribute, target)),
                transform=axes.transAxes,
                ha="left",
                va="top",
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.0},
            )
            axes.set_xlabel(ATTRIBUTE_LABELS.get(attribute, attribute))
            axes.set_ylabel(f"{TARGET_SHORT[target]} (pp)")
            axes.margins(y=0.3)
            if r == 0:
                axes.set_title(TARGET_LABELS[target])
    suptitle(figure, title)
    return figure


# ---------------------------------------------------------------------------------------------
# 4. Heatmap of Spearman rho over attributes x (layer, target).


@styled
def correlations_figure(
    correlations: pd.DataFrame,
    layers: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Spearman rho (unit basis) of every attribute (rows) with D_u and M_u of every layer."""
    table = correlations
    if "basis" in table:
        table = table[table["basis"] == "unit"]
    layers = list(layers) if layers is not None else list(dict.fromkeys(table["layer"]))
    attributes = in_order(list(table["attribute"]), [*SCATTER_ATTRIBUTES, "activation_variance"])
    targets = in_order(list(table["target"]), TARGETS)
    columns = [(layer, target) for layer in layers for target in targets]
    rho = np.full((len(attributes), len(columns)), np.nan)
    p = np.full_like(rho, np.nan)
    for _, row in table.iterrows():
        key = (row["layer"], row["target"])
        if key in columns and row["attribute"] in attributes:
            i, j = attributes.index(row["attribute"]), columns.index(key)
            rho[i, j] = float(numeric([row["spearman"]])[0])
            p[i, j] = float(numeric([row["spearman_p"]])[0])
    height = 0.3 * max(1, len(attributes)) + 1.5 + (0.3 if title else 0.0)
    figure = Figure(figsize=(PAPER_WIDTH, height), layout="constrained")
    axes = figure.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")
    image = axes.imshow(np.ma.masked_invalid(rho), cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto")
    for i in range(rho.shape[0]):
        for j in range(rho.shape[1]):
            if not np.isfinite(rho[i, j]):
                continue
            star = "*" if np.isfinite(p[i, j]) and p[i, j] < SIGNIFICANCE else ""
            color = "white" if abs(rho[i, j]) > 0.6 else "black"
            axes.text(j, i, f"{rho[i, j]:.2f}{star}", ha="center", va="center", color=color)
    axes.set_xticks(np.arange(len(columns)), labels=[TARGET_SHORT.get(t, t) for _, t in columns])
    axes.set_yticks(
        np.arange(len(attributes)), labels=[ATTRIBUTE_LABELS.get(a, a) for a in attributes]
    )
    for boundary in range(len(targets), len(columns), max(1, len(targets))):
        axes.axvline(boundary - 0.5, color="white", linewidth=2.0)
    top = axes.secondary_xaxis("top")
    centers = [len(targets) * k + (len(targets) - 1) / 2 for k in range(len(layers))]
    top.set_xticks(centers, labels=layers, rotation=20 if len(layers) > 4 else 0)
    top.tick_params(length=0, labelsize=STYLE["xtick.labelsize"])
    top.spines[:].set_visible(False)
    axes.spines[:].set_visible(False)
    axes.set_xlabel("drop target ($D_u$: overall, $M_u$: max class), by layer (top)")
    axes.set_ylabel("unit attribute")
    colorbar = figure.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label(f"Spearman ρ (* p < {SIGNIFICANCE:g}; grey: undefined)")
    suptitle(figure, title)
    return figure


# ---------------------------------------------------------------------------------------------
# 5. Class prediction hit rates against chance and a permutation baseline.


def panel_grid(figure: Figure, count: int, max_columns: int = 3, **kwargs: Any) -> list[Axes]:
    """`count` axes in rows of up to `max_columns`; unused cells are removed."""
    columns = max(1, min(count, max_columns))
    rows = max(1, math.ceil(count / columns))
    grid = figure.subplots(rows, columns, squeeze=False, **kwargs).ravel()
    for extra in grid[count:]:
        extra.remove()
    return list(grid[: max(count, 1)])


@styled
def class_prediction_figure(
    table: pd.DataFrame,
    layers: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Per layer: top-1 and top-5 hit rates (%) of each class attribute, chance and permutation,
    over the hurting units (M_u > 0; class_prediction.csv's headline rows)."""
    if "basis" in table:
        table = table[table["basis"] == "unit"]
    if "unit_set" in table:
        table = table[table["unit_set"] == "hurting"]
    layers = list(layers) if layers is not None else list(dict.fromkeys(table["layer"]))
    rows = max(1, math.ceil(len(layers) / 3))
    figure = Figure(
        figsize=(PAPER_WIDTH, 2.6 * rows + 0.5 + (0.3 if title else 0.0)), layout="constrained"
    )
    panels = panel_grid(figure, len(layers), sharey=True)
    width = 0.38
    for axes, layer in zip(panels, layers, strict=False):
        rows_of_layer = table[table["layer"] == layer]
        attributes = in_order(list(rows_of_layer["attribute"]), CLASS_ATTRIBUTES)
        positions = np.arange(len(attributes))
        for offset, metric, color in ((-width / 2, "top1", UNIT_COLOR), (width / 2, "top5", LIGHT)):
            for x, attribute in zip(positions, attributes, strict=True):
                row = rows_of_layer[rows_of_layer["attribute"] == attribute].iloc[0]
                rate = 100.0 * float(numeric([row[f"{metric}_hit_rate"]])[0])
                chance = 100.0 * float(numeric([row[f"chance_{metric}"]])[0])
                permuted = 100.0 * float(numeric([row[f"permutation_{metric}"]])[0])
                center = x + offset
                if np.isfinite(rate):
                    axes.bar(center, rate, width=width, color=color, zorder=2)
                else:
                    axes.text(center, 2.0, "n/a", ha="center", va="bottom", rotation=90)
                if np.isfinite(chance):
                    axes.hlines(
                        chance,
                        center - width / 2,
                        center + width / 2,
                        colors="black",
                        linestyles=":",
                        linewidth=1.2,
                        zorder=3,
                    )
                if np.isfinite(permuted):
                    axes.plot(
                        center,
                        permuted,
                        marker="D",
                        markersize=4,
                        markerfacecolor="white",
                        markeredgecolor="black",
                        linestyle="none",
                        zorder=4,
                    )
        axes.set_xticks(
            positions, labels=[CLASS_ATTRIBUTE_LABELS.get(a, a) for a in attributes], rotation=20
        )
        axes.set_ylim(0.0, 100.0)
        axes.set_xlabel("class attribute")
        axes.set_ylabel("hit rate (% of units)")
        axes.set_title(layer)
        if not attributes:
            empty_note(axes)
    handles = [
        Patch(color=UNIT_COLOR, label="top-1: predicted class is the most-hurt class"),
        Patch(color=LIGHT, label="top-5: among the 5 most-hurt classes"),
        Line2D([], [], color="black", linestyle=":", label="chance (1/K, 5/K)"),
        Line2D(
            [],
            [],
            marker="D",
            markerfacecolor="white",
            markeredgecolor="black",
            linestyle="none",
            label="permutation baseline",
        ),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    suptitle(figure, title)
    return figure


# ---------------------------------------------------------------------------------------------
# 6. Rotation control: unit vs rotated bases.


def detector_count(values: pd.Series) -> float:
    """Number of detectors in a column of is_detector flags; NaN when no flag is known."""
    flags = values.map(
        lambda v: (
            {"true": 1.0, "false": 0.0}.get(str(v).strip().lower(), np.nan)
            if isinstance(v, str)
            else (
                np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(bool(v))
            )
        )
    )
    known = flags.dropna()
    return float(known.sum()) if len(known) else float("nan")


def _basis_boxes(axes: Axes, data: Mapping[str, np.ndarray], bases: Sequence[str]) -> None:
    """Box plots of one column per basis; bases without finite values are marked n/a."""
    for x, basis in enumerate(bases):
        values = data[basis]
        if not values.size:
            axes.text(x, 0.5, "n/a", transform=axes.get_xaxis_transform(), ha="center")
            continue
        axes.boxplot(
            values,
            positions=[x],
            widths=0.6,
            patch_artist=True,
            boxprops={"facecolor": basis_color(basis), "alpha": 0.6},
            medianprops={"color": "black"},
            flierprops={"markersize": 2, "alpha": 0.5},
        )
    axes.set_xticks(np.arange(len(bases)), labels=list(bases))
    axes.set_xlim(-0.6, len(bases) - 0.4)


@styled
def rotation_figure(
    units: pd.DataFrame,
    layers: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Per layer (rows): M_u and selectivity per basis (boxes) and detector counts (bars)."""
    layers = list(layers) if layers is not None else list(dict.fromkeys(units["layer"]))
    bases = ordered_bases(list(units["basis"]))
    figure = Figure(
        figsize=(PAPER_WIDTH, 2.0 * max(1, len(layers)) + 0.3 + (0.3 if title else 0.0)),
        layout="constrained",
    )
    grid = figure.subplots(max(1, len(layers)), 3, squeeze=False)
    for r, layer in enumerate(layers):
        of_layer = units[units["layer"] == layer]
        by_basis = {b: of_layer[of_layer["basis"] == b] for b in bases}
        for c, column in enumerate(("max_class_drop", "selectivity")):
            axes = grid[r, c]
            data = {
                b: finite(t[column]) if column in t else np.empty(0) for b, t in by_basis.items()
            }
            _basis_boxes(axes, data, bases)
            axes.set_ylabel(TARGET_LABELS.get(column, ATTRIBUTE_LABELS.get(column, column)))
            axes.set_xlabel("basis")
            axes.set_title(f"{layer}: {'$M_u$' if c == 0 else 'selectivity'}")
        axes = grid[r, 2]
        counts = [
            detector_count(t["is_detector"]) if "is_detector" in t else float("nan")
            for t in by_basis.values()
        ]
        for x, (basis, count) in enumerate(zip(bases, counts, strict=True)):
            if np.isfinite(count):
                axes.bar(x, count, color=basis_color(basis), alpha=0.8, width=0.6)
                axes.text(x, count, f"{count:.0f}", ha="center", va="bottom")
            else:
                axes.text(
                    x,
                    0.5,
                    missing_text("is_detector", by_basis[basis]),
                    transform=axes.get_xaxis_transform(),
                    ha="center",
                    va="center",
                    rotation=90,
                    fontsize=8,
                )
        axes.set_xticks(np.arange(len(bases)), labels=list(bases))
        axes.set_xlim(-0.6, len(bases) - 0.4)
        axes.margins(y=0.15)
        axes.set_ylabel("detectors (units)")
        axes.set_xlabel("basis")
        axes.set_title(f"{layer}: detectors")
    suptitle(figure, title)
    return figure


# ---------------------------------------------------------------------------------------------
# 7. Training variants side by side.


def baseline_accuracy(baseline: pd.DataFrame) -> float:
    """Overall top-1 accuracy (%) of a baseline table: sum n_correct / sum n_images over classes.

    Rows with a negative class_index (the `overall` summary row) are left out of the sums.
    """
    table = baseline
    if "class_index" in table:
        table = table[numeric(table["class_index"]) >= 0]
    images = float(numeric(table["n_images"]).sum())
    return 100.0 * float(numeric(table["n_correct"]).sum()) / images if images else float("nan")


def model_label(model: str, accuracy: float | None) -> str:
    """'model (95.3%)', or the bare name when the accuracy is unknown."""
    if accuracy is None or not np.isfinite(accuracy):
        return model
    return f"{model} ({accuracy:.1f}%)"


VARIANT_COLUMNS: tuple[str, ...] = ("overall_drop", "max_class_drop", "selectivity", "iou")


def missing_text(column: str, rows: pd.DataFrame) -> str:
    """What a panel prints where a column has no value: why for IoU without a concept set."""
    concept_column = column in ("iou", "is_detector")
    return NO_CONCEPT_SET if concept_column and not concepts_measured(rows) else "n/a"


@styled
def variants_figure(
    units: pd.DataFrame,
    accuracy: Mapping[str, float],
    models: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Box plots of D_u, M_u, selectivity and IoU per model, grouped by layer."""
    if "basis" in units:
        units = units[units["basis"] == "unit"]
    models = list(models) if models is not None else list(dict.fromkeys(units["model"]))
    layers: list[str] = []
    for model in models:
        layers.extend(units.loc[units["model"] == model, "layer"])
    layers = list(dict.fromkeys(layers))
    colors = {m: matplotlib.colormaps["tab10"](i % 10) for i, m in enumerate(models)}
    groups = [
        (layer, [m for m in models if ((units["model"] == m) & (units["layer"] == layer)).any()])
        for layer in layers
    ]
    figure = Figure(figsize=(PAPER_WIDTH, 5.6 + (0.3 if title else 0.0)), layout="constrained")
    panels = figure.subplots(2, 2).ravel()
    for axes, column in zip(panels, VARIANT_COLUMNS, strict=True):
        position, centers = 0.0, []
        for layer, members in groups:
            start = position
            for model in members:
                rows = units[(units["model"] == model) & (units["layer"] == layer)]
                values = finite(rows[column]) if column in rows else np.empty(0)
                if values.size:
                    axes.boxplot(
                        values,
                        positions=[position],
                        widths=0.7,
                        patch_artist=True,
                        boxprops={"facecolor": colors[model], "alpha": 0.7},
                        medianprops={"color": "black"},
                        flierprops={"markersize": 2, "alpha": 0.5},
                    )
                else:
                    axes.text(
                        position,
                        0.5,
                        missing_text(column, rows),
                        transform=axes.get_xaxis_transform(),
                        ha="center",
                        va="center",
                        rotation=90 if column == "iou" else 0,
                        fontsize=8,
                    )
                position += 1.0
            centers.append((start + position - 1.0) / 2.0)
            position += 0.8  # gap between layer groups
            axes.axvline(position - 0.9, color="0.85", linewidth=0.6, zorder=0)
        axes.set_xticks(centers, labels=[layer for layer, _ in groups])
        axes.tick_params(axis="x", labelrotation=15 if len(groups) > 3 else 0)
        axes.set_xlim(-0.8, max(position - 0.8, 0.2))
        axes.set_xlabel("layer")
        axes.set_ylabel(TARGET_LABELS.get(column, ATTRIBUTE_LABELS.get(column, column)))
        if column in TARGETS:
            axes.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
    handles = [
        Patch(facecolor=colors[m], alpha=0.7, label=model_label(m, accuracy.get(m))) for m in models
    ]
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(4, max(1, len(models))),
        frameon=False,
        title="model (baseline top-1 accuracy)",
    )
    suptitle(figure, title)
    return figure


# ---------------------------------------------------------------------------------------------
# 8. Cumulative ablation: class drop vs k for top-ranked and random unit sets.


def cumulative_summary(table: pd.DataFrame, selection: str, column: str) -> pd.DataFrame:
    """Per k: median and quartiles over classes of `column` (random draws averaged per class)."""
    rows = table[(table["selection"] == selection) & (numeric(table["k"]) > 0)]
    per_class = rows.groupby(["k", "class"], sort=True)[column].mean().unstack("class")
    return pd.DataFrame(
        {
            "median": per_class.median(axis=1),
            "q1": per_class.quantile(0.25, axis=1),
            "q3": per_class.quantile(0.75, axis=1),
        }
    )


def per_class_curves(table: pd.DataFrame, selection: str, column: str) -> pd.DataFrame:
    """k x class table of `column` for one selection (random draws averaged)."""
    rows = table[(table["selection"] == selection) & (numeric(table["k"]) > 0)]
    return rows.groupby(["k", "class"], sort=True)[column].mean().unstack("class")


@styled
def cumulative_figure(tables: Mapping[str, pd.DataFrame], title: str | None = None) -> Figure:
    """Per layer: class and overall drop vs k for the class's top-k units and for random units."""
    layers = list(tables)
    rows = max(1, math.ceil(len(layers) / 3))
    figure = Figure(
        figsize=(PAPER_WIDTH, 2.5 * rows + 0.7 + (0.3 if title else 0.0)), layout="constrained"
    )
    panels = panel_grid(figure, len(layers), sharey=True)
    colors = {"top": TOP_COLOR, "random": RANDOM_COLOR}
    for axes, layer in zip(panels, layers, strict=False):
        table = tables[layer]
        ks = [int(k) for k in finite(table["k"]) if k > 0]
        curves = per_class_curves(table, "top", "class_drop")
        for name in curves.columns:
            axes.plot(curves.index, curves[name], color=TOP_COLOR, linewidth=0.4, alpha=0.3)
        for selection in ("top", "random"):
            summary = cumulative_summary(table, selection, "class_drop")
            if summary.empty:
                continue
            axes.fill_between(
                summary.index,
                summary["q1"],
                summary["q3"],
                color=colors[selection],
                alpha=0.18,
                linewidth=0,
            )
            axes.plot(summary.index, summary["median"], color=colors[selection], linewidth=1.8)
            overall = cumulative_summary(table, selection, "overall_drop")
            axes.plot(
                overall.index,
                overall["median"],
                color=colors[selection],
                linestyle="--",
                marker="o",
                markersize=2.5,
                linewidth=1.1,
            )
        if ks:
            integer_log2_axis(axes, ks)
        else:
            empty_note(axes)
        axes.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
        axes.set_xlabel("units ablated $k$ (log$_2$ scale)")
        axes.set_ylabel("accuracy drop (pp)")
        axes.set_title(layer)
    handles = [
        Line2D([], [], color=TOP_COLOR, linewidth=1.8, label="class drop, class's top-k units"),
        Line2D([], [], color=RANDOM_COLOR, linewidth=1.8, label="class drop, random k units"),
        Line2D(
            [],
            [],
            color=TOP_COLOR,
            linestyle="--",
            marker="o",
            markersize=2.5,
            label="overall drop, class's top-k units",
        ),
        Line2D(
            [],
            [],
            color=RANDOM_COLOR,
            linestyle="--",
            marker="o",
            markersize=2.5,
            label="overall drop, random k units",
        ),
        Line2D([], [], color=TOP_COLOR, linewidth=0.4, alpha=0.5, label="one class (top-k)"),
        Patch(color="0.5", alpha=0.3, label="interquartile range over classes"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    suptitle(figure, title)
    return figure
