"""The figures' shared style: sizes, fonts, colours, saving, and small helpers of several figures.

Every figure is a `matplotlib.figure.Figure` built without pyplot (no global figure registry);
fonts and sizes come from `STYLE`, applied only while a figure is drawn (`styled`).
`save_figure` writes `<stem>.png` and `<stem>.pdf` atomically and leaves out the metadata that
changes between runs, so rerunning gives identical bytes. Drops are in percentage points (pp),
accuracies and hit rates in percent.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from unitablation.attribute_registry import label
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
    with matplotlib.rc_context(STYLE), _quiet_font_subsetting():
        for path, metadata in zip(paths, (PNG_METADATA, PDF_METADATA), strict=True):
            with atomic_path(path) as temporary:
                figure.savefig(temporary, format=path.suffix[1:], dpi=dpi, metadata=metadata)
    return paths


@contextmanager
def _quiet_font_subsetting() -> Iterator[None]:
    """Keep fontTools' INFO records (a few hundred lines per PDF: every glyph subset) out of
    the job's log while the PDF embeds its fonts; its warnings still come through."""
    fonts = logging.getLogger("fontTools")
    previous = fonts.level
    fonts.setLevel(logging.WARNING)
    try:
        yield
    finally:
        fonts.setLevel(previous)


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


def panel_grid(figure: Figure, count: int, max_columns: int = 3, **kwargs: Any) -> list[Axes]:
    """`count` axes in rows of up to `max_columns`; unused cells are removed."""
    columns = max(1, min(count, max_columns))
    rows = max(1, math.ceil(count / columns))
    grid = figure.subplots(rows, columns, squeeze=False, **kwargs).ravel()
    for extra in grid[count:]:
        extra.remove()
    return list(grid[: max(count, 1)])


def missing_text(column: str, rows: pd.DataFrame) -> str:
    """What a panel prints where a column has no value: why for IoU without a concept set."""
    concept_column = column in ("iou", "is_detector")
    return NO_CONCEPT_SET if concept_column and not concepts_measured(rows) else "n/a"


def axis_label(column: str) -> str:
    """Axis label of a units.csv column: a drop target's, else the attribute registry's."""
    return TARGET_LABELS.get(column, label(column))
