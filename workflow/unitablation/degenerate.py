"""Dead units (never active on the eval set), as the tables flag them.

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
