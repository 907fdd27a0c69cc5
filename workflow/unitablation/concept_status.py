"""Tables of a model without a concept set: concept columns present, empty, and marked so.

A model entry without `concept_set` skips concept IoU; its units.csv keeps the concept columns
with `iou`, `threshold` and `is_detector` empty (NaN) and the concept names empty, and every
statistic, figure and summary line that would read them says NO_CONCEPT_SET instead. A
measured layer always has a finite best IoU (0 for a unit that overlaps nothing), so an all-NaN
`iou` column marks "not measured" unambiguously.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The reason printed wherever a concept number is missing because the model has no concept set.
NO_CONCEPT_SET = "no concept set"
#: The concept columns of units.csv without a concept set (no per-category columns: no categories).
NUMERIC_CONCEPT_COLUMNS: tuple[str, ...] = ("iou", "is_detector", "threshold")
TEXT_CONCEPT_COLUMNS: tuple[str, ...] = ("concept", "concept_category", "concept_class")


def unmeasured_concepts(units: np.ndarray) -> pd.DataFrame:
    """A concepts table of these units with nothing measured (the stand-in for concepts.csv)."""
    table = pd.DataFrame({"unit": np.asarray(units)})
    for column in ("iou", "concept", "concept_category", "is_detector", "threshold"):
        table[column] = np.nan if column in NUMERIC_CONCEPT_COLUMNS else ""
    table["concept_class"] = ""
    return table


def concepts_measured(units: pd.DataFrame) -> bool:
    """Whether a units/comparison table carries measured concept IoUs (any finite `iou`)."""
    for column in ("iou", "iou_mean"):
        if column in units:
            return bool(np.isfinite(pd.to_numeric(units[column], errors="coerce")).any())
    return False
