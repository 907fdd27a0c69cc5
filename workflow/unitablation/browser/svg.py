"""Small inline SVG figures of the unit browser: a unit's most-hurt classes as bars, and a
class's cumulative-ablation curve (its top units against random sets)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

BAR_COLOR = "#c0392b"
GAIN_COLOR = "#2e86c1"
TOP_COLOR = "#c0392b"
RANDOM_COLOR = "#7f8c8d"


def _number(value: float) -> str:
    """A coordinate with at most one decimal (keeps the markup short and stable)."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def class_bars(drops: Sequence[tuple[str, str]], width: int = 300, row: int = 18) -> str:
    """Horizontal bars of (class, drop in points as written in the table), 0..100 points.

    A negative drop (the class gained accuracy) is drawn leftwards in blue, on a 20-point
    scale left of the axis; each bar's title gives the table's own text.
    """
    label_width, value_width = 96, 52
    negative_width = 24
    plot = width - label_width - value_width - negative_width
    axis = label_width + negative_width
    height = row * max(len(drops), 1) + 4
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
    ]
    for i, (name, text) in enumerate(drops):
        value = float(text) if text not in ("", "NA", "nan") else math.nan
        y = 2 + i * row
        label = escape(name)
        parts.append(
            f'<text x="{label_width - 4}" y="{y + row * 0.7:.1f}" text-anchor="end" '
            f'font-size="11">{label}</text>'
        )
        if math.isfinite(value):
            if value >= 0:
                length = plot * min(value, 100.0) / 100.0
                x, color = axis, BAR_COLOR
            else:
                length = negative_width * min(-value, 20.0) / 20.0
                x, color = axis - length, GAIN_COLOR
            parts.append(
                f'<rect x="{_number(x)}" y="{y + 2}" width="{_number(length)}" '
                f'height="{row - 5}" fill="{color}"><title>{label}: {escape(text)} pp</title>'
                "</rect>"
            )
        parts.append(
            f'<text x="{width - value_width + 4}" y="{y + row * 0.7:.1f}" font-size="11">'
            f"{escape(text)} pp</text>"
        )
    parts.append(
        f'<line x1="{axis}" y1="0" x2="{axis}" y2="{height}" stroke="#333" stroke-width="1"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def cumulative_curve(
    top: Sequence[tuple[int, float]],
    random: Sequence[tuple[int, float]],
    width: int = 320,
    height: int = 180,
) -> str:
    """Class drop (points) against the number k of ablated units (log2 axis): the class's own
    top units (red) and the mean of random sets of the same size (grey)."""
    left, right, bottom, upper = 40, 10, 30, 10
    ks = sorted({k for k, _ in top} | {k for k, _ in random})
    if not ks:
        return ""
    span = max(math.log2(max(ks)), 1.0)
    values = [v for _, v in top] + [v for _, v in random]
    low = min(0.0, min(values))
    high = max(100.0, max(values))

    def x(k: int) -> float:
        return left + (width - left - right) * math.log2(k) / span

    def y(v: float) -> float:
        return height - bottom - (height - bottom - upper) * (v - low) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f'<line x1="{left}" y1="{_number(y(low))}" x2="{width - right}" y2="{_number(y(low))}" '
        'stroke="#333"/>',
        f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{_number(y(low))}" stroke="#333"/>',
    ]
    for tick in (0.0, 50.0, 100.0):
        if low <= tick <= high:
            parts.append(
                f'<text x="{left - 4}" y="{_number(y(tick) + 4)}" text-anchor="end" '
                f'font-size="10">{tick:.0f}</text>'
            )
    for k in ks:
        parts.append(
            f'<text x="{_number(x(k))}" y="{height - bottom + 14}" text-anchor="middle" '
            f'font-size="10">{k}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" text-anchor="middle" '
        'font-size="10">units ablated (k)</text>'
    )
    for series, color, name in ((random, RANDOM_COLOR, "random"), (top, TOP_COLOR, "top")):
        if not series:
            continue
        points = " ".join(f"{_number(x(k))},{_number(y(v))}" for k, v in series)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for k, v in series:
            parts.append(
                f'<circle cx="{_number(x(k))}" cy="{_number(y(v))}" r="2.5" fill="{color}">'
                f"<title>{name}, k = {k}: {v:.4g} pp</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)
