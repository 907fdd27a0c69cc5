"""read_table keeps name columns as written: digit class names, empty cells, "NA"-like names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unitablation.attribute_registry import class_attributes
from unitablation.table_io import CLASS_COLUMNS, is_name_column, read_class_matrix, read_table


def write(path: Path, text: str) -> Path:
    """A CSV file with exactly `text`."""
    path.write_text(text)
    return path


def test_digit_class_names_with_an_empty_cell_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path / "units.csv",
        "unit,most_hurt_class,selective_class,top5_hurt_classes,overall_drop\n"
        "0,3,,3,0.5\n"
        "1,10,7,10;3;7,0\n"
        "2,0,0,0;10,\n",
    )
    naive = pd.read_csv(path)
    assert naive["selective_class"].tolist()[1] == 7.0  # what pandas alone does: "7" -> 7.0
    table = read_table(path)
    assert table["most_hurt_class"].tolist() == ["3", "10", "0"]
    assert table["selective_class"].tolist() == ["", "7", "0"]
    assert table["top5_hurt_classes"].tolist() == ["3", "10;3;7", "0;10"]
    assert table["unit"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(table["overall_drop"].to_numpy(), [0.5, 0.0, np.nan])


def test_names_that_pandas_reads_as_missing_are_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path / "baseline.csv",
        "class_index,class,n_images,accuracy\n0,NA,4,50\n1,nan,4,\n2,None,0,\n-1,overall,8,25\n",
    )
    table = read_table(path)
    assert table["class"].tolist() == ["NA", "nan", "None", "overall"]
    assert table["accuracy"].isna().tolist() == [False, True, True, False]


def test_numeric_columns_are_read_as_pandas_reads_them(tmp_path: Path) -> None:
    path = write(
        tmp_path / "concepts.csv",
        "unit,iou,concept,concept_scene,iou_scene,is_detector,layer\n"
        "0,0.25,1,2,0.125,True,3\n"
        "1,0,,,0,False,3\n",
    )
    table, naive = read_table(path), pd.read_csv(path)
    for column in ("unit", "iou", "iou_scene", "is_detector"):
        pd.testing.assert_series_equal(table[column], naive[column])
    assert table["concept"].tolist() == ["1", ""]
    assert table["concept_scene"].tolist() == ["2", ""]
    assert table["layer"].tolist() == ["3", "3"]


def test_round_trip_of_a_written_table(tmp_path: Path) -> None:
    written = pd.DataFrame(
        {
            "unit": [0, 1, 2, 3],
            "most_hurt_class": ["1", "2", "01", "1.0"],
            "concept_class": ["", "2", "", "1"],
            "selectivity": [0.5, 0.25, 0.0, 1.0],
        }
    )
    path = tmp_path / "t.csv"
    written.to_csv(path, index=False, float_format="%.6g")
    table = read_table(path)
    assert table["most_hurt_class"].tolist() == ["1", "2", "01", "1.0"]
    assert table["concept_class"].tolist() == ["", "2", "", "1"]
    np.testing.assert_array_equal(table["selectivity"].to_numpy(), written["selectivity"])


def test_options_apply_to_every_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "unit,class\n0,1\n1,2\n2,3\n")
    assert read_table(path, nrows=2)["class"].tolist() == ["1", "2"]
    assert list(read_table(path, nrows=0).columns) == ["unit", "class"]


def test_every_class_attribute_is_a_class_column() -> None:
    assert set(class_attributes()) <= CLASS_COLUMNS
    assert all(map(is_name_column, ("concept_object", "concept_category", "basis", "units")))
    assert not any(map(is_name_column, ("iou_object", "iou", "unit", "n_tied", "accuracy")))


def test_unreadable_table_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.csv", 'unit,class\n0,1,2,3\n"unterminated\n')
    with pytest.raises(ValueError, match="broken.csv"):
        read_table(path)


def test_class_matrix_keeps_numeric_drops_under_any_class_name(tmp_path: Path) -> None:
    path = write(tmp_path / "class_drops.csv", "unit,layer,3,concept_x\n0,25,,-25\n1,0,50,0\n")
    table = read_class_matrix(path)
    assert list(table.columns) == ["unit", "layer", "3", "concept_x"]
    np.testing.assert_array_equal(table["layer"].to_numpy(), [25.0, 0.0])
    np.testing.assert_array_equal(table["3"].to_numpy(), [np.nan, 50.0])
