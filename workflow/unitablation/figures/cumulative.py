"""Cumulative ablation: class and overall drop against k, a class's top-k units against random."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from unitablation.figures.registry import FigureJob, FigureSpec
from unitablation.figures.style import (
    PAPER_WIDTH,
    RANDOM_COLOR,
    TOP_COLOR,
    empty_note,
    finite,
    integer_log2_axis,
    numeric,
    panel_grid,
    styled,
    suptitle,
)
from unitablation.table_io import read_table

LOG = logging.getLogger(__name__)

SPEC = FigureSpec(
    name="cumulative",
    scope="model",
    inputs={"tables": "results/{model}/{layer}/unit/cumulative.csv"},
    caption=(
        "Cumulative ablation in model **{model}**, one panel per layer: accuracy drops in "
        "percentage points (pp) when k units are ablated together (k on a log2 axis; units "
        "ranked by single-unit class drop on one half of the eval images, drops measured on the "
        "other half). Solid red: the class's own drop when its k top-ranked units are removed "
        "(median over classes, band = interquartile range, thin lines = single classes); solid "
        "grey: the same for k random units. Dashed: the overall accuracy drop for the same unit "
        "sets, which stays small while a class is destroyed."
    ),
)


def render(job: FigureJob) -> Figure:
    """cumulative.csv of every layer of one model, config order."""
    tables = {layer: read_table(path) for layer, path in job.keyed("tables", "layer").items()}
    for layer, table in tables.items():
        LOG.info("%s: %d rows, k = %s", layer, len(table), sorted(set(table["k"])))
    return cumulative_figure(tables, title=f"{job.wildcards['model']}: cumulative ablation")


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
