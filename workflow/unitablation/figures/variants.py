"""Training variants side by side: drops, selectivity and IoU per model, grouped by layer."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from unitablation.figures.registry import FigureJob, FigureSpec
from unitablation.figures.style import (
    PAPER_WIDTH,
    TARGETS,
    axis_label,
    finite,
    missing_text,
    numeric,
    styled,
    suptitle,
)
from unitablation.table_io import read_table

LOG = logging.getLogger(__name__)

SPEC = FigureSpec(
    name="variants",
    scope="study",
    inputs={
        "units": "results/{model}/{layer}/unit/units.csv",
        "baselines": "results/{model}/baseline.csv",
    },
    caption=(
        "Training variants side by side: distributions over units (unit basis) of the overall "
        "drop D_u and the max class drop M_u (percentage points), class selectivity and best "
        "concept IoU, one box per model within each layer. The legend gives each model's "
        "baseline top-1 accuracy on the eval set (percent)."
    ),
)
VARIANT_COLUMNS: tuple[str, ...] = ("overall_drop", "max_class_drop", "selectivity", "iou")


def render(job: FigureJob) -> Figure:
    """units.csv (unit basis) of every model and layer and each model's baseline.csv."""
    units = pd.concat([read_table(path) for path in job.paths("units")], ignore_index=True)
    baselines = job.keyed("baselines", "model")
    accuracy = {model: baseline_accuracy(read_table(path)) for model, path in baselines.items()}
    for model, value in accuracy.items():
        LOG.info("%s: baseline accuracy %.2f%%", model, value)
    return variants_figure(units, accuracy, list(baselines), title="Training variants")


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
        axes.set_ylabel(axis_label(column))
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
