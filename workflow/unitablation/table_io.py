"""Reading the pipeline's CSV tables back with name columns kept as the strings written.

pandas guesses column types: class names such as "0".."9" would come back as integers, or as
floats ("3.0") in a column with an empty cell, and names such as "NA" or "nan" as missing
values; either way they no longer match the names they are compared with. Every reader of a
result table goes through `read_table`, which reads the name columns verbatim (an empty cell is
"") and every other column as pandas would.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .attribute_registry import class_attributes

#: Columns whose cells are class names, or ";"-joined lists of class names: the class-valued
#: unit attributes (attributes.csv, concepts.csv, units.csv) and the drop tables' class columns.
CLASS_COLUMNS = frozenset(
    {
        *class_attributes(),
        "class",  # baseline.csv, cumulative.csv
        "most_hurt_class",  # drops.csv, units.csv
        "top5_hurt_classes",  # units.csv
        "classes_never_predicted",  # variants.csv, rotation.csv
    }
)
#: Other columns of names: the table keys (a model or module path may be "3"), the best concept
#: label, and the ";"-joined unit lists of cumulative.csv (a single unit "3" stays "3").
NAME_COLUMNS = frozenset({"model", "layer", "basis", "concept", "units"})
#: concepts.csv's per-category columns concept_<category> hold label names.
LABEL_PREFIX = "concept_"


def is_name_column(column: str) -> bool:
    """Whether a table column holds names (read verbatim as strings) rather than numbers."""
    return column in CLASS_COLUMNS or column in NAME_COLUMNS or column.startswith(LABEL_PREFIX)


def read_table(path: str | Path, **options) -> pd.DataFrame:
    """Read a result CSV; name columns stay strings exactly as written and empty cells are "".

    `options` go to `pandas.read_csv` for both passes (e.g. `nrows`); ValueError names the file
    when it cannot be parsed.
    """
    try:
        table = pd.read_csv(path, **options)
        names = [column for column in table.columns if is_name_column(str(column))]
        if names:
            verbatim = pd.read_csv(
                path, usecols=names, dtype=str, keep_default_na=False, na_filter=False, **options
            )
            for column in names:
                table[column] = verbatim[column].to_numpy(dtype=object)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read table {path}: {error}") from error
    return table


def read_class_matrix(path: str | Path, **options) -> pd.DataFrame:
    """Read a units x classes table (class_drops.csv): `unit`, then one numeric column per class.

    Its header holds the class names (kept verbatim as strings by pandas), so the name-column
    rule of `read_table` must not apply: a class called "layer" would turn its drops into text.
    """
    try:
        table = pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read table {path}: {error}") from error
    table.columns = [str(column) for column in table.columns]
    return table


def read_flag(value: object) -> bool | None:
    """A true/false table cell as a bool: "true"/"false" (any case, padded) or a number;
    None where it holds no flag (an empty or NaN cell, any other text)."""
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower())
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)
