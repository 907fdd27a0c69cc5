"""Degenerate units: dead units (never active) and units that overlap no concept.

Such units must pass through every table without crashing and without an arbitrary value
posing as a result (an argmax over all-equal numbers names the first entry): the tables flag
them (`dead`) or leave the undefined cell empty, and the statistics exclude and count them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def flag(value: object) -> bool:
    """A table cell as a boolean: True, 1 or "true" (any case); NaN, None and the rest False."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return value == 1.0
    return False


def dead_flags(units: pd.DataFrame) -> np.ndarray:
    """A units table's `dead` column as booleans (all False when the column is absent)."""
    if "dead" not in units.columns:
        return np.zeros(len(units), dtype=bool)
    return np.array([flag(value) for value in units["dead"]], dtype=bool)


def blank_unmatched_concepts(concepts: pd.DataFrame) -> pd.DataFrame:
    """concepts.csv rows with no concept named where the unit overlaps none.

    A unit whose best IoU is 0 (e.g. a dead unit: T_u = 0 and its mask, map > T_u, is empty)
    has no best concept, but argmax over all-zero IoUs would name the first label. Its
    `concept`, `concept_category` and `concept_class` are left empty, and so is
    `concept_<category>` wherever `iou_<category>` is 0.
    """
    table = concepts.copy()
    pairs = [("iou", ("concept", "concept_category", "concept_class"))]
    pairs += [
        (column, (f"concept_{column.removeprefix('iou_')}",))
        for column in table.columns
        if column.startswith("iou_")
    ]
    for iou, names in pairs:
        if iou not in table:
            continue
        unmatched = ~(pd.to_numeric(table[iou], errors="coerce") > 0)
        for name in names:
            if name in table:
                table[name] = table[name].astype(object).where(~unmatched, "")
    return table
