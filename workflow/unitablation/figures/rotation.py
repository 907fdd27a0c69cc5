"""Rotation control: unit basis against rotated bases per layer (M_u, selectivity, detectors)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from unitablation.figures.registry import FigureJob, FigureSpec
from unitablation.figures.style import (
    PAPER_WIDTH,
    axis_label,
    basis_color,
    finite,
    missing_text,
    ordered_bases,
    styled,
    suptitle,
)
from unitablation.table_io import read_flag, read_table

LOG = logging.getLogger(__name__)

SPEC = FigureSpec(
    name="rotation",
    scope="model",
    inputs={"units": "results/{model}/{layer}/{basis}/units.csv"},
    caption=(
        "Rotation control for model **{model}**: each row is a layer. Box plots of the max "
        "class drop M_u (percentage points) and of class selectivity over the units of the unit "
        "basis (blue) and of each randomly rotated basis (orange), and the number of concept "
        "detectors (units with best IoU at or above the detector threshold) per basis. Bases "
        "whose values are not computed are marked n/a."
    ),
)


def render(job: FigureJob) -> Figure:
    """units.csv of every (layer, basis) of one model."""
    units = pd.concat([read_table(path) for path in job.paths("units")], ignore_index=True)
    layers = list(dict.fromkeys(units["layer"].astype(str)))
    bases = list(dict.fromkeys(units["basis"].astype(str)))
    LOG.info("%d unit rows; layers %s; bases %s", len(units), layers, bases)
    title = f"{units['model'].iloc[0]}: unit vs rotated bases" if len(units) else None
    return rotation_figure(units, layers, title=title)


def detector_count(values: pd.Series) -> float:
    """Number of detectors in a column of is_detector flags; NaN when no flag is known."""
    known = [flag for flag in map(read_flag, values) if flag is not None]
    return float(sum(known)) if known else float("nan")


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
            axes.set_ylabel(axis_label(column))
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
