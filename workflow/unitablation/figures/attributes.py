"""Scatter grid of each unit attribute against the overall and the max class drop."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from unitablation.attribute_registry import label, scatter_attributes
from unitablation.concept_status import NO_CONCEPT_SET, concepts_measured
from unitablation.figures.registry import FigureJob, FigureSpec
from unitablation.figures.style import (
    PAPER_WIDTH,
    TARGET_LABELS,
    TARGET_SHORT,
    TARGETS,
    UNIT_COLOR,
    empty_note,
    format_p,
    numeric,
    styled,
    suptitle,
)
from unitablation.table_io import read_table

LOG = logging.getLogger(__name__)

SPEC = FigureSpec(
    name="attributes",
    scope="layer",
    inputs={
        "units": "results/{model}/{layer}/unit/units.csv",
        "correlations": "results/{model}/{layer}/unit/correlations.csv",
    },
    caption=(
        "Unit attributes against ablation importance in layer **{layer}** of model **{model}** "
        "(unit basis), one point per unit: each row is one attribute (weight L1 norms, class "
        "selectivity, class correlation, best concept IoU, activation statistics; attributes "
        "undefined in this layer are left out), the columns are the overall drop D_u and the "
        "max class drop M_u in percentage points (pp). Each panel gives the Spearman rank "
        "correlation rho, its two-sided p-value and the number of units from the correlation "
        "table."
    ),
)


def render(job: FigureJob) -> Figure:
    """units.csv and correlations.csv of one (model, layer), unit basis."""
    units = read_table(job.path("units"))
    correlations = read_table(job.path("correlations"))
    present = plotted_attributes(units)
    left_out = [a for a in scatter_attributes() if a not in present]
    LOG.info("attributes plotted: %s; without finite values: %s", present, left_out)
    title = f"{units['model'].iloc[0]}, {units['layer'].iloc[0]}" if len(units) else None
    return attributes_figure(units, correlations, title=title)


def plotted_attributes(units: pd.DataFrame, attributes: Sequence[str] | None = None) -> list[str]:
    """The scatter attributes present in the table with at least one finite value, in order."""
    attributes = scatter_attributes() if attributes is None else attributes
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
    attributes: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter of each attribute with finite values (rows) against D_u and M_u (columns)."""
    attributes = scatter_attributes() if attributes is None else attributes
    present = plotted_attributes(units, attributes)
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
            axes.set_xlabel(label(attribute))
            axes.set_ylabel(f"{TARGET_SHORT[target]} (pp)")
            axes.margins(y=0.3)
            if r == 0:
                axes.set_title(TARGET_LABELS[target])
    suptitle(figure, title)
    return figure
