"""Heatmap of Spearman rho: every unit attribute against D_u and M_u of every layer of a model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from unitablation.attribute_registry import label, numeric_attributes
from unitablation.figures.registry import FigureJob, FigureSpec
from unitablation.figures.style import (
    PAPER_WIDTH,
    SIGNIFICANCE,
    STYLE,
    TARGET_SHORT,
    TARGETS,
    in_order,
    numeric,
    styled,
    suptitle,
)

LOG = logging.getLogger(__name__)

SPEC = FigureSpec(
    name="correlations",
    scope="model",
    inputs={"correlations": "results/{model}/{layer}/unit/correlations.csv"},
    caption=(
        "Spearman rank correlation rho between each unit attribute (rows) and each drop target "
        "(overall drop D_u, max class drop M_u) in each studied layer of model **{model}** "
        "(columns), unit basis, on a blue (-1) to red (+1) scale. A star marks p < 0.05 (two- "
        "sided); grey cells are undefined (the attribute has no finite values or is constant in "
        "that layer)."
    ),
)


def render(job: FigureJob) -> Figure:
    """correlations.csv (unit basis) of every layer of one model, config order."""
    table, layers, title = job.layer_tables("correlations")
    LOG.info("%d correlation rows over layers %s", len(table), layers)
    return correlations_figure(table, layers, title=title)


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
    attributes = in_order(list(table["attribute"]), numeric_attributes())
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
    axes.set_yticks(np.arange(len(attributes)), labels=[label(a) for a in attributes])
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
