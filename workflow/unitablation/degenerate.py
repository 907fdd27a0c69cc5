"""Dead and constant units, as the tables flag them.

A unit is `dead` when it is never active on the eval set where maps are rectified (unit basis
of a post-ReLU layer: it is all zero there); elsewhere (a rotated direction, a pre-activation
unit) max <= 0 says nothing of the kind, and only a `constant` unit (zero variance of a_u over
the eval set) is degenerate. Such units must pass through every table without crashing and
without an arbitrary value posing as a result (an argmax over all-equal numbers names the
first entry): the tables flag them or leave the undefined cell empty, and the statistics
exclude and count them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .table_io import read_flag


def flag(value: object) -> bool:
    """A table cell as a boolean (table_io.read_flag); an empty or unreadable cell is False."""
    return read_flag(value) is True


def flags(units: pd.DataFrame, column: str) -> np.ndarray:
    """A units table's boolean column (all False when the column is absent)."""
    if column not in units.columns:
        return np.zeros(len(units), dtype=bool)
    return np.array([flag(value) for value in units[column]], dtype=bool)


def dead_flags(units: pd.DataFrame) -> np.ndarray:
    """A units table's `dead` column as booleans (all False when the column is absent)."""
    return flags(units, "dead")


def constant_flags(units: pd.DataFrame) -> np.ndarray:
    """A units table's `constant` column as booleans (all False when the column is absent)."""
    return flags(units, "constant")
