"""One (model, layer, basis) of the unit browser: every unit's table row and card, and the
class view, read from the layer's tables and stores.

Table cells carry the tables' own text (units.csv, class_drops.csv), so what the page shows is
what the files say. Images are referenced, not copied: each reference names its source folder
and relative path, and `page` copies the union once. Masks are the Network Dissection
definition (the unit's map upsampled bilinearly to the image, strictly above T_u), drawn from
the concept store's maps (rotated into the basis first, as the concept IoU does).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unitablation.broden import read_broden
from unitablation.browser.outlines import mask_overlay_uri
from unitablation.browser.svg import class_bars, cumulative_curve
from unitablation.masks import unit_mask
from unitablation.rotation import haar_rotation, parse_basis
from unitablation.store import ActivationStore, open_hdf5

#: The columns of the unit table: (units.csv column, header shown). The hurt column is added
#: from the table's own `n_classes_hurt_<tau>` columns (10 points where configured).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("unit", "unit"),
    ("overall_drop", "D_u"),
    ("max_class_drop", "M_u"),
    ("most_hurt_class", "most-hurt class"),
    ("selectivity", "selectivity"),
    ("selective_class", "selective class"),
    ("class_correlation", "class correlation"),
    ("concept", "best concept"),
    ("concept_category", "concept category"),
    ("iou", "IoU"),
    ("is_detector", "detector"),
)
#: Columns every units.csv has (the concept columns exist only with a concept set).
REQUIRED_COLUMNS = ("unit", "overall_drop", "max_class_drop", "most_hurt_class")
#: Columns that sort as numbers in the page.
NUMERIC_COLUMNS = frozenset(
    {"unit", "overall_drop", "max_class_drop", "selectivity", "class_correlation", "iou"}
)
#: The attributes a card lists (those present in units.csv), in this order.
CARD_ATTRIBUTES = (
    "overall_drop",
    "max_class_drop",
    "overall_prob_drop",
    "top5_mean_drop",
    "n_lost",
    "near_ties",
    "l1_in",
    "l1_in_bn",
    "l1_out",
    "outgoing_class",
    "selectivity",
    "selective_class",
    "class_correlation",
    "correlated_class",
    "mean_activation",
    "active_fraction",
    "activation_variance",
    "dead",
    "constant",
    "threshold",
)
HURT_PATTERN = re.compile(r"^n_classes_hurt_(\d+(?:\.\d+)?)$")
PREFERRED_HURT_POINTS = 10.0


@dataclass(frozen=True)
class LayerSources:
    """The files one (model, layer, basis) of the browser reads; concept files and the
    cumulative table are None where the run has none (no concept set; a rotated basis)."""

    units: Path
    class_drops: Path
    eval_store: Path
    eval_images: Path
    concepts: Path | None = None
    concept_store: Path | None = None
    broden: Path | None = None
    cumulative: Path | None = None


@dataclass(frozen=True)
class ImageRef:
    """An image the page shows: its source folder and its path relative to that folder."""

    source: Path
    relative: str

    @property
    def target(self) -> str:
        """Where the page finds it, relative to index.html."""
        return f"images/{source_slug(self.source)}/{self.relative}"


def source_slug(folder: Path) -> str:
    """A folder name for an image source: its path with every run of other characters as `_`."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", Path(folder).as_posix()).strip("_.")
    return slug or "images"


def read_text_table(path: Path, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """A CSV as rows of its cells' own text; ValueError naming the file and missing columns."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [column for column in required if column not in header]
            if missing:
                raise ValueError(f"table {path} has no column(s) {', '.join(missing)}")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"cannot read table {path}: {error}") from error


def hurt_column(columns: Sequence[str]) -> str | None:
    """The `n_classes_hurt_<tau>` column shown: tau = 10 points if present, else the smallest."""
    found = {float(m.group(1)): c for c in columns if (m := HURT_PATTERN.match(c))}
    if not found:
        return None
    return found.get(PREFERRED_HURT_POINTS, found[min(found)])


def to_float(text: str) -> float:
    """A table cell as a float (NaN for empty, NA or text)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def top_rows(values: np.ndarray, count: int) -> list[int]:
    """Indices of the `count` largest finite values, largest first, ties by smaller index."""
    values = np.asarray(values, dtype=np.float64)
    rows = np.flatnonzero(np.isfinite(values))
    order = np.lexsort((rows, -values[rows]))
    return [int(rows[i]) for i in order[:count]]


def basis_rotation(basis: str, channels: int) -> np.ndarray | None:
    """The basis's (C, C) rotation (row j = direction j), None for the unit basis."""
    seed = parse_basis(basis)
    return None if seed is None else haar_rotation(channels, seed)


def eval_examples(
    store_path: Path, layer: str, rotation: np.ndarray | None, count: int
) -> tuple[list[list[int]], np.ndarray, list[str], list[int], list[str]]:
    """Each unit's `count` eval images by a_u(x) (the unit's spatial mean, rotated into the
    basis): rows per unit, the (N, C) scores, image paths, labels and class names."""
    with ActivationStore(store_path) as store:
        if "paths" not in store.file:
            raise ValueError(f"activation store {store_path} holds no image paths")
        means = np.asarray(store.layer(layer)["mean"][:], dtype=np.float64)
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in store.file["paths"]]
        labels = [int(label) for label in store.labels()]
        classes = store.classes
    if rotation is not None:
        means = means @ rotation.T
    rows = [top_rows(means[:, unit], count) for unit in range(means.shape[1])]
    return rows, means, paths, labels, classes


def concept_examples(
    sources: LayerSources, layer: str, rotation: np.ndarray | None, count: int
) -> dict[int, list[dict[str, Any]]]:
    """Each unit's top `count` concept images (ranked by the concept IoU job) with its mask
    overlay; empty without a concept set. Each image's maps are read once, for every unit that
    ranks it (top images overlap across units)."""
    if sources.concepts is None or sources.concept_store is None or sources.broden is None:
        return {}
    broden = read_broden(sources.broden)
    with (
        open_hdf5(sources.concepts, "concept IoU matrix") as concepts,
        ActivationStore(sources.concept_store) as store,
    ):
        maps = store.layer(layer)["maps"]
        thresholds = concepts["thresholds"][:]
        top_images = concepts["top_images"][:, :count]
        top_scores = concepts["top_scores"][:, :count]
        if maps.shape[0] != len(broden.records) or maps.shape[1] != len(thresholds):
            raise ValueError(
                f"activation store {sources.concept_store} holds {maps.shape[0]} images x "
                f"{maps.shape[1]} units of layer {layer!r}, but the concept set "
                f"{sources.broden} has {len(broden.records)} images and {sources.concepts} "
                f"{len(thresholds)} units"
            )
        ranked_by_row: dict[int, list[tuple[int, int, float]]] = {}
        for unit in range(len(thresholds)):
            pairs = zip(top_images[unit], top_scores[unit], strict=True)
            for rank, (row, score) in enumerate(pairs):
                if row >= 0:  # -1: fewer ranked images than asked for
                    ranked_by_row.setdefault(int(row), []).append((unit, rank, float(score)))
        cards: dict[tuple[int, int], dict[str, Any]] = {}
        for row in sorted(ranked_by_row):
            record = broden.records[row]
            channels = np.asarray(maps[row], dtype=np.float64)
            for unit, rank, score in ranked_by_row[row]:
                if rotation is None:
                    activation = channels[unit].astype(np.float32)
                else:  # the direction's coordinate, in float64 then float32 as the IoU job
                    activation = np.tensordot(rotation[unit], channels, axes=1).astype(np.float32)
                mask = unit_mask(activation, (record.ih, record.iw), float(thresholds[unit]))
                cards[unit, rank] = {
                    "image": ImageRef(broden.root / "images", record.image),
                    "width": int(record.iw),
                    "height": int(record.ih),
                    "score": f"{score:.4g}",
                    "mask_fraction": f"{float(mask.mean()):.3f}",
                    "overlay": mask_overlay_uri(mask),
                }
    return {
        unit: [cards[unit, rank] for rank in range(count) if (unit, rank) in cards]
        for unit in range(len(thresholds))
    }


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header; ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def category_concepts(row: Mapping[str, str]) -> list[list[str]]:
    """[category, concept, IoU] per category column pair (iou_<c>, concept_<c>) of a row."""
    out = []
    for column in row:
        if column.startswith("iou_"):
            category = column[len("iou_") :]
            out.append([category, row.get(f"concept_{category}", ""), row[column]])
    return out


def class_hurt_list(
    row: Mapping[str, str], drops: Mapping[str, str], count: int = 5
) -> list[tuple[str, str]]:
    """A unit's `count` most-hurt classes with their drop text: the units table's own order
    (top5_hurt_classes, ties broken there) when it lists them, else by drop, column order."""
    listed = [name.strip() for name in row.get("top5_hurt_classes", "").split(";") if name]
    listed = [name for name in listed if name in drops]
    if not listed:
        finite = [(name, to_float(text)) for name, text in drops.items()]
        finite = [(name, value) for name, value in finite if math.isfinite(value)]
        order = sorted(range(len(finite)), key=lambda i: (-finite[i][1], i))
        listed = [finite[i][0] for i in order]
    return [(name, drops[name]) for name in listed[:count]]


def cumulative_series(
    path: Path, class_name: str
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(top, random-mean) class-drop series of one class from cumulative.csv."""
    rows = [
        r
        for r in read_text_table(path, ("class", "k", "selection", "class_drop"))
        if r["class"] == class_name
    ]
    top = sorted((int(r["k"]), to_float(r["class_drop"])) for r in rows if r["selection"] == "top")
    draws: dict[int, list[float]] = {}
    for r in rows:
        if r["selection"] == "random":
            draws.setdefault(int(r["k"]), []).append(to_float(r["class_drop"]))
    random = [(k, float(np.mean(v))) for k, v in sorted(draws.items())]
    return [p for p in top if math.isfinite(p[1])], [p for p in random if math.isfinite(p[1])]


def build_layer(
    sources: LayerSources,
    model: str,
    layer: str,
    basis: str,
    images_per_unit: int,
    class_units: int,
) -> tuple[dict[str, Any], list[ImageRef]]:
    """The browser's data for one (model, layer, basis) and the images it references."""
    units = read_text_table(sources.units, REQUIRED_COLUMNS)
    if not units:
        raise ValueError(f"table {sources.units} has no units")
    header = list(units[0])
    columns = [(c, title) for c, title in TABLE_COLUMNS if c in header]  # no concept set: fewer
    hurt = hurt_column(header)
    if hurt is not None:
        tau = HURT_PATTERN.match(hurt).group(1)
        after = [c for c, _ in columns].index("most_hurt_class") + 1
        columns.insert(after, (hurt, f"classes hurt >= {tau} pp"))
    drop_rows = read_text_table(sources.class_drops, ["unit"])
    class_names = [c for c in (list(drop_rows[0]) if drop_rows else []) if c != "unit"]
    drops_by_unit = {r["unit"]: {c: r[c] for c in class_names} for r in drop_rows}
    n_units = len(units)
    rotation = basis_rotation(basis, n_units)
    eval_rows, scores, paths, labels, classes = eval_examples(
        sources.eval_store, layer, rotation, images_per_unit
    )
    if scores.shape[1] != n_units:
        raise ValueError(
            f"activation store {sources.eval_store} has {scores.shape[1]} units of layer "
            f"{layer!r} but {sources.units} has {n_units} rows"
        )
    concepts = concept_examples(sources, layer, rotation, images_per_unit)
    refs: dict[tuple[Path, str], ImageRef] = {}
    sizes: dict[int, tuple[int, int]] = {}
    cards = []
    for position, row in enumerate(units):
        unit = int(row["unit"])
        if unit != position:
            raise ValueError(f"table {sources.units} row {position} is unit {unit}, not {position}")
        drops = drops_by_unit.get(row["unit"])
        if drops is None:
            raise ValueError(f"table {sources.class_drops} has no row for unit {unit}")
        hurt_list = class_hurt_list(row, drops)
        eval_cards = []
        for image_row in eval_rows[unit]:
            if image_row not in sizes:
                sizes[image_row] = image_size(sources.eval_images / paths[image_row])
            ref = ImageRef(sources.eval_images, paths[image_row])
            refs[(ref.source, ref.relative)] = ref
            label = labels[image_row]
            eval_cards.append(
                {
                    "src": ref.target,
                    "width": sizes[image_row][0],
                    "height": sizes[image_row][1],
                    "class": classes[label] if 0 <= label < len(classes) else "",
                    "activation": f"{scores[image_row, unit]:.4g}",
                }
            )
        concept_cards = []
        for example in concepts.get(unit, []):
            ref = example.pop("image")
            refs[(ref.source, ref.relative)] = ref
            concept_cards.append({"src": ref.target, **example})
        cards.append(
            {
                "attributes": [[c, row[c]] for c in CARD_ATTRIBUTES if c in row],
                "categories": category_concepts(row),
                "hurt": [list(pair) for pair in hurt_list],
                "bars": class_bars(hurt_list),
                "eval_images": eval_cards,
                "concept_images": concept_cards,
            }
        )
    class_view = []
    for name in class_names:
        ranked = top_rows(
            np.array([to_float(drops_by_unit[str(u)][name]) for u in range(n_units)]),
            class_units,
        )
        curve = ""
        if sources.cumulative is not None:
            curve = cumulative_curve(*cumulative_series(sources.cumulative, name))
        class_view.append(
            {
                "class": name,
                "units": [[u, drops_by_unit[str(u)][name]] for u in ranked],
                "curve": curve,
            }
        )
    data = {
        "model": model,
        "layer": layer,
        "basis": basis,
        "columns": [
            [c, title, c in NUMERIC_COLUMNS or bool(HURT_PATTERN.match(c))] for c, title in columns
        ],
        "rows": [[row[c] for c, _ in columns] for row in units],
        "cards": cards,
        "classes": class_view,
        "has_concepts": bool(concepts),
        "has_cumulative": sources.cumulative is not None,
    }
    return data, sorted(refs.values(), key=lambda r: (str(r.source), r.relative))
