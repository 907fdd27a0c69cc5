"""Example units: the units with the largest max class drop, their most-hurt classes, and the
concept-set images they fire on most with their Network Dissection masks."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from unitablation.broden import read_broden
from unitablation.concept_status import NO_CONCEPT_SET
from unitablation.figures.registry import FigureJob, FigureSpec
from unitablation.figures.style import (
    MASK_COLOR,
    PAPER_WIDTH,
    TOP_COLOR,
    empty_note,
    numeric,
    styled,
    suptitle,
)
from unitablation.masks import unit_mask
from unitablation.store import ActivationStore, open_hdf5
from unitablation.table_io import read_class_matrix, read_table

LOG = logging.getLogger(__name__)

SPEC = FigureSpec(
    name="examples",
    scope="layer",
    inputs={
        "units": "results/{model}/{layer}/unit/units.csv",
        "class_drops": "results/{model}/{layer}/unit/class_drops.csv",
    },
    concept_inputs={
        "concepts": "results/{model}/{layer}/unit/concepts.h5",
        "store": "results/{model}/activations/concept/{layer}.h5",
        "broden": "{concept_set}",
    },
    config_keys=("figures.dpi", "figures.example_units", "figures.example_images"),
    caption=(
        "The units of layer **{layer}** of model **{model}** whose ablation hurts one class "
        "most (largest max class drop M_u), one row per unit. Left: the unit's five most-hurt "
        "classes and their accuracy drops in percentage points (pp). Right: the concept-set "
        "images on which the unit fires most, with its Network Dissection mask (map bilinearly "
        "upsampled to the image, above the unit's threshold T_u) tinted cyan; the row title "
        "gives the unit's best Broden concept and its IoU."
    ),
)


def render(job: FigureJob) -> Figure:
    """Top `figures.example_units` units by M_u, each with its `figures.example_images` top
    concept images; without a concept set the rows show their classes and say so."""
    layer = job.wildcards["layer"]
    units = read_table(job.path("units"))
    class_drops = read_class_matrix(job.path("class_drops"))
    class_drops.columns = ["unit", *map(str, class_drops.columns[1:])]
    chosen = example_units(units, job.settings["figures.example_units"])
    concepts_path = job.optional("concepts")
    if concepts_path is None:
        LOG.info("%s: units %s shown without concept images", NO_CONCEPT_SET, chosen)
        images = {unit: [] for unit in chosen}
    else:
        images = concept_examples(
            concepts_path,
            job.path("store"),
            job.path("broden"),
            layer,
            chosen,
            job.settings["figures.example_images"],
        )
    title = f"{units['model'].iloc[0]}, {layer}: units with the largest class drop"
    return examples_figure(units, class_drops, images, title=title)


def concept_examples(
    concepts_path: str,
    store_path: str,
    broden_dir: str,
    layer: str,
    chosen: list[int],
    example_images: int,
) -> dict[int, list[ExampleImage]]:
    """Each chosen unit's top concept images with its mask (map upsampled, > T_u)."""
    broden = read_broden(broden_dir)
    images: dict[int, list[ExampleImage]] = {}
    concepts_file = open_hdf5(concepts_path, "concept IoU matrix")
    with concepts_file as concepts, ActivationStore(store_path) as store:
        maps = store.layer(layer)["maps"]
        for unit in chosen:
            threshold = float(concepts["thresholds"][unit])
            rows = concepts["top_images"][unit][:example_images]
            scores = concepts["top_scores"][unit][:example_images]
            images[unit] = []
            for row, score in zip(rows, scores, strict=True):
                if row < 0:  # fewer ranked images than asked for
                    continue
                picture = broden.load_image(int(row))
                activation = np.asarray(maps[int(row), unit], dtype=np.float32)
                mask = unit_mask(activation, picture.shape[:2], threshold)
                images[unit].append(ExampleImage(picture, mask, int(row), float(score)))
            LOG.info(
                "unit %d: threshold %.4g, images %s",
                unit,
                threshold,
                [e.index for e in images[unit]],
            )
    return images


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
