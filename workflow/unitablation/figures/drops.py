"""Sorted per-unit drops and their histograms, unit basis against the rotated bases."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from unitablation.figures.registry import FigureJob, FigureSpec
from unitablation.figures.style import (
    PAPER_WIDTH,
    ROTATED_COLORS,
    TARGET_LABELS,
    TARGET_SHORT,
    TARGETS,
    UNIT_COLOR,
    basis_style,
    empty_note,
    finite,
    ordered_bases,
    styled,
    suptitle,
)
from unitablation.table_io import read_table

LOG = logging.getLogger(__name__)

SPEC = FigureSpec(
    name="drops",
    scope="layer",
    inputs={"units": "results/{model}/{layer}/{basis}/units.csv"},
    caption=(
        "Ablation drops of every unit of layer **{layer}** of model **{model}**. Top: the "
        "overall accuracy drop D_u and the largest class drop M_u, both in percentage points "
        "(pp), with units ranked from the largest drop down; the unit basis is the solid blue "
        "line, each randomly rotated basis a dashed orange line. Bottom: histograms of the same "
        "drops (percent of the units of a basis per bin), unit basis against all rotated bases "
        "pooled."
    ),
)


def render(job: FigureJob) -> Figure:
    """units.csv of every basis of one (model, layer), unit basis first."""
    tables = {}
    for path in job.paths("units"):
        table = read_table(path)
        tables[str(table["basis"].iloc[0]) if len(table) else Path(path).parent.name] = table
    first = next(iter(tables.values()))
    title = f"{first['model'].iloc[0]}, {first['layer'].iloc[0]}" if len(first) else None
    for basis, table in tables.items():
        LOG.info("%s: %d units", basis, len(table))
    return drops_figure(tables, title=title)


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
