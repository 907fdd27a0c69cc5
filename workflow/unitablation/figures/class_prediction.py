"""Class prediction: hit rates of each class attribute per layer, against chance and permutation."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from unitablation.attribute_registry import class_attributes, label
from unitablation.figures.registry import FigureJob, FigureSpec
from unitablation.figures.style import (
    LIGHT,
    PAPER_WIDTH,
    UNIT_COLOR,
    empty_note,
    in_order,
    numeric,
    panel_grid,
    styled,
    suptitle,
)

LOG = logging.getLogger(__name__)

SPEC = FigureSpec(
    name="class_prediction",
    scope="model",
    inputs={"predictions": "results/{model}/{layer}/unit/class_prediction.csv"},
    caption=(
        "How well a unit's class-valued attributes predict which class its ablation hurts most, "
        "per layer of model **{model}** (unit basis), over the units whose ablation lowers some "
        'class (max class drop > 0; the "hurting" rows of class_prediction.csv). Dark bars: '
        "percent of units whose selective, correlated, outgoing-weight or concept-implied class "
        "is the most-hurt class (top-1); light bars: is among its five most-hurt classes "
        "(top-5). Dotted lines mark chance (1/K and 5/K for K classes) and diamonds the "
        "permutation baseline (classes shuffled across units)."
    ),
)


def render(job: FigureJob) -> Figure:
    """class_prediction.csv (unit basis) of every layer of one model, config order."""
    table, layers, title = job.layer_tables("predictions")
    LOG.info("%d class-prediction rows over layers %s", len(table), layers)
    return class_prediction_figure(table, layers, title=title)


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
        attributes = in_order(list(rows_of_layer["attribute"]), class_attributes())
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
        axes.set_xticks(positions, labels=[label(a) for a in attributes], rotation=20)
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
