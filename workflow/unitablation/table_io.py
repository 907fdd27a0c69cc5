"""Reading the pipeline's CSV tables back with class names kept as the strings they were written as.

pandas guesses column types: class names such as "0".."9" would come back as integers, or as
floats ("3.0") in a column with an empty cell, and no longer match the names they are compared
with. Every reader of a result table goes through `read_table`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: Columns whose cells are class names (or class-name lists), never numbers.
CLASS_COLUMNS = frozenset(
    {
        "class",
        "most_hurt_class",
        "selective_class",
        "correlated_class",
        "outgoing_class",
        "concept_class",
        "top5_classes",
        "worst_class",
    }
)


def read_table(path: str | Path, **options) -> pd.DataFrame:
    """Read a result CSV; class-name columns stay strings and empty class cells are ""."""
    header = pd.read_csv(path, nrows=0).columns
    names = [column for column in header if column in CLASS_COLUMNS]
    table = pd.read_csv(path, dtype={column: str for column in names}, **options)
    for column in names:
        table[column] = table[column].fillna("")
    return table
