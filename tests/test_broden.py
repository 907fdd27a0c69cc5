"""Tests of the Broden layout: mask codec, reader edge cases, and the world writers round trip."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unitablation.broden import (
    CATEGORY_COLUMNS,
    CODE_COLUMNS,
    INDEX_COLUMNS,
    LABEL_COLUMNS,
    decode_mask,
    encode_mask,
    load_mask,
    read_broden,
    save_mask,
)
from unitablation.world import (
    COLOR_NAMES,
    SHAPES,
    TEXTURES,
    Scene,
    WorldSpec,
    class_names,
    generate_split,
)
from unitablation.world_export import (
    world_labels,
    write_broden,
    write_concept_set,
    write_image_folder,
)

TINY = WorldSpec(
    image_size=32, n_classes=3, train_per_class=2, val_per_class=1, concept_images=24, seed=3
)


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


# --- mask codec ------------------------------------------------------------------------------


def test_mask_round_trip_through_png_uses_green_for_high_ids(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 255, 256], [257, 1000, 4097, 65535]], dtype=np.int64)
    path = tmp_path / "m.png"
    save_mask(path, ids)
    raw = np.asarray(Image.open(path))
    assert raw.shape == (2, 4, 3) and raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[..., 1], ids // 256)
    assert not raw[..., 2].any()
    back = load_mask(path)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, ids)
    np.testing.assert_array_equal(decode_mask(encode_mask(ids.astype(np.uint16))), ids)


@pytest.mark.parametrize("bad", [-1, 65536, 70000])
def test_encode_rejects_out_of_range_ids(bad: int) -> None:
    with pytest.raises(ValueError, match="65535"):
        encode_mask(np.array([[0, bad]]))


def test_codec_rejects_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        encode_mask(np.zeros((2, 2), dtype=float))
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 2, 2), dtype=int))
    with pytest.raises(ValueError, match="shape"):
        decode_mask(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="nothere.png"):
        load_mask(tmp_path / "nothere.png")


# --- reader on hand-built directories --------------------------------------------------------

LABELS = [
    (1, "red-c", "color(2)"),
    (2, "blue-c", "color(1)"),
    (3, "car", "object(1)"),
    (4, "wheel", "part(1)"),
    (5, "door", "part(1)"),
    (6, "kitchen-s", "scene(2)"),
    (7, "striped", "texture(1)"),
    (8, "dotted", "texture(1)"),
    (9, "fabric", "material(2);object(1)"),
    (300, "sky", "object(1)"),
]
CATEGORIES = {
    "color": [1, 2],
    "object": [3, 9, 300],
    "part": [4, 5],
    "material": [9],
    "scene": [6],
    "texture": [7, 8],
}


def write_csv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    """Write a small CSV file."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def build_broden(root: Path, rows: list[dict[str, str]], masks: dict[str, np.ndarray]) -> Path:
    """A tiny Broden directory in the real release's style (jpg images under ade20k/)."""
    images = root / "images" / "ade20k"
    images.mkdir(parents=True)
    for row in rows:
        ih, iw = int(row["ih"]), int(row["iw"])
        Image.fromarray(np.full((ih, iw, 3), 128, dtype=np.uint8)).save(
            root / "images" / row["image"]
        )
    for name, ids in masks.items():
        save_mask(root / "images" / name, ids)
    write_csv(
        root / "index.csv",
        list(INDEX_COLUMNS),
        [{c: row.get(c, "") for c in INDEX_COLUMNS} for row in rows],
    )
    label_rows = [
        dict(zip(LABEL_COLUMNS, (n, name, cat, 1, 0.5, ""), strict=True)) for n, name, cat in LABELS
    ]
    write_csv(root / "label.csv", list(LABEL_COLUMNS), label_rows)
    cat_rows = [
        dict(zip(CATEGORY_COLUMNS, (cat, min(nums), max(nums), len(nums), 1), strict=True))
        for cat, nums in CATEGORIES.items()
    ]
    write_csv(root / "category.csv", list(CATEGORY_COLUMNS), cat_rows)
    names = {n: name for n, name, _ in LABELS}
    for cat, nums in CATEGORIES.items():
        code_rows = [
            dict(zip(CODE_COLUMNS, (code, n, names[n], 1, 0.5), strict=True))
            for code, n in enumerate(nums, start=1)
        ]
        write_csv(root / f"c_{cat}.csv", list(CODE_COLUMNS), code_rows)
    return root


ROW_A = {
    "image": "ade20k/ADE_train_00000001.jpg",
    "split": "train",
    "ih": "8",
    "iw": "6",
    "sh": "4",
    "sw": "3",
    "color": "ade20k/ADE_train_00000001_color.png",
    "object": "ade20k/ADE_train_00000001_object.png",
    "part": "ade20k/ADE_train_00000001_part_1.png;ade20k/ADE_train_00000001_part_2.png",
    "scene": "6",
    "texture": "7;8",
}
ROW_B = {
    "image": "ade20k/ADE_val_00000002.jpg",
    "split": "val",
    "ih": "8",
    "iw": "6",
    "sh": "4",
    "sw": "3",
}
ROW_B |= {"color": "ade20k/ADE_val_00000002_color.png", "scene": "6"}
COLOR_A = np.array([[1, 1, 2], [1, 2, 2], [0, 0, 1], [1, 1, 1]])
OBJECT_A = np.array([[3, 3, 300], [300, 300, 300], [9, 9, 0], [0, 0, 0]])
PART_A1 = np.array([[4, 4, 0], [0, 0, 0], [0, 5, 5], [0, 0, 0]])
PART_A2 = np.array([[0, 5, 0], [0, 0, 0], [0, 0, 4], [0, 0, 0]])
COLOR_B = np.ones((4, 3), dtype=int)


def good_masks() -> dict[str, np.ndarray]:
    """Masks of ROW_A and ROW_B."""
    return {
        ROW_A["color"]: COLOR_A,
        ROW_A["object"]: OBJECT_A,
        "ade20k/ADE_train_00000001_part_1.png": PART_A1,
        "ade20k/ADE_train_00000001_part_2.png": PART_A2,
        ROW_B["color"]: COLOR_B,
    }


@pytest.fixture
def tiny_broden(tmp_path: Path) -> Path:
    """A valid two-image hand-built Broden directory."""
    return build_broden(tmp_path / "broden", [ROW_A, ROW_B], good_masks())


def test_reader_tables(tiny_broden: Path) -> None:
    b = read_broden(tiny_broden)
    assert len(b) == 2 and b.categories == list(CATEGORIES)
    assert b.label_names[300] == "sky" and b.category_of_label[300] == "object"
    # primary = largest c_<category>.csv coverage; 0.5 in both: the later category wins the tie
    assert b.category_of_label[9] == "material" and b.labels.loc[9, "category"] == "material"
    assert b.category_coverage["object"][9] == b.category_coverage["material"][9] == 0.5
    assert b.label_categories[9] == {"material": 2, "object": 1}
    assert b.category_labels == CATEGORIES
    assert list(b.labels.loc[[1, 300], "name"]) == ["red-c", "sky"]
    assert [r.split for r in b.records] == ["train", "val"]
    rec = b.records[0]
    assert (rec.ih, rec.iw, rec.sh, rec.sw) == (8, 6, 4, 3)
    assert rec.cells["part"] == tuple(ROW_A["part"].split(";")) and rec.cells["texture"] == (7, 8)
    assert b.load_image(0).shape == (8, 6, 3) and b.load_image(0).dtype == np.uint8


def set_coverage(root: Path, category: str, number: int, coverage: str) -> None:
    """Rewrite one label's coverage cell in c_<category>.csv."""
    header, rows = read_rows(root / f"c_{category}.csv")
    for row in rows:
        if int(row["number"]) == number:
            row["coverage"] = coverage
    write_csv(root / f"c_{category}.csv", header, rows)


def test_primary_category_is_the_largest_coverage_not_the_largest_count(tmp_path: Path) -> None:
    root = build_broden(tmp_path / "b", [ROW_A], good_masks())
    set_coverage(root, "object", 9, "0.75")  # label.csv counts: material 2, object 1
    b = read_broden(root)
    assert b.label_categories[9] == {"material": 2, "object": 1}
    assert b.category_of_label[9] == "object" and b.labels.loc[9, "category"] == "object"
    set_coverage(root, "material", 9, "0.8")
    assert read_broden(root).category_of_label[9] == "material"


def test_label_in_no_category_file_has_no_primary_category(tmp_path: Path) -> None:
    root = build_broden(tmp_path / "b", [ROW_A], good_masks())
    header, rows = read_rows(root / "c_texture.csv")
    write_csv(root / "c_texture.csv", header, [r for r in rows if r["number"] != "8"])
    b = read_broden(root)
    assert b.category_of_label[8] == "" and b.category_of_label[7] == "texture"


@pytest.mark.parametrize("value", ["", "many", "-1", "nan"])
def test_bad_or_missing_coverage_names_the_file(tmp_path: Path, value: str) -> None:
    root = build_broden(tmp_path / "b", [ROW_A], good_masks())
    set_coverage(root, "part", 5, value)
    with pytest.raises(ValueError, match=r"c_part\.csv: line 3: coverage"):
        read_broden(root)
    header, rows = read_rows(root / "c_part.csv")
    header.remove("coverage")
    write_csv(root / "c_part.csv", header, [{c: r[c] for c in header} for r in rows])
    with pytest.raises(ValueError, match=r"c_part\.csv: missing required column\(s\) coverage"):
        read_broden(root)


def test_reader_stacks_layers_and_fills_image_level_labels(tiny_broden: Path) -> None:
    b = read_broden(tiny_broden)
    labels = b.load_labels(0)
    assert set(labels) == {"color", "object", "part", "scene", "texture"}
    assert all(v.dtype == np.int32 for v in labels.values())
    np.testing.assert_array_equal(labels["color"], COLOR_A[None])
    np.testing.assert_array_equal(labels["object"], OBJECT_A[None])  # ids > 255 survive
    np.testing.assert_array_equal(labels["part"], np.stack([PART_A1, PART_A2]))
    np.testing.assert_array_equal(labels["scene"], np.full((1, 4, 3), 6))
    np.testing.assert_array_equal(
        labels["texture"], np.stack([np.full((4, 3), 7), np.full((4, 3), 8)])
    )
    assert b.image_level(0) == {"scene": [6], "texture": [7, 8]}


def test_empty_cells_leave_categories_out(tiny_broden: Path) -> None:
    b = read_broden(tiny_broden)
    labels = b.load_labels(1)
    assert set(labels) == {"color", "scene"}
    assert b.image_level(1) == {"scene": [6]}


@pytest.mark.parametrize("column", ["sh", "image", "texture"])
def test_missing_index_column_is_named(tmp_path: Path, column: str) -> None:
    root = build_broden(tmp_path / "b", [ROW_A, ROW_B], good_masks())
    header, rows = read_rows(root / "index.csv")
    header.remove(column)
    write_csv(root / "index.csv", header, [{c: r[c] for c in header} for r in rows])
    with pytest.raises(ValueError, match=rf"index\.csv.*{column}"):
        read_broden(root)


def test_unknown_mask_id_names_the_file(tmp_path: Path) -> None:
    masks = good_masks() | {"ade20k/ADE_train_00000001_part_2.png": PART_A2 + 70}
    b = read_broden(build_broden(tmp_path / "b", [ROW_A], masks))
    with pytest.raises(ValueError, match=r"ADE_train_00000001_part_2\.png.*label\.csv"):
        b.load_labels(0)


def test_unknown_image_level_label_is_rejected(tmp_path: Path) -> None:
    b = read_broden(build_broden(tmp_path / "b", [ROW_A | {"texture": "7;42"}], good_masks()))
    with pytest.raises(ValueError, match=r"\[42\].*label\.csv"):
        b.load_labels(0)


def test_wrong_mask_size_is_rejected(tmp_path: Path) -> None:
    masks = good_masks() | {ROW_A["object"]: np.zeros((3, 4), dtype=int)}
    b = read_broden(build_broden(tmp_path / "b", [ROW_A], masks))
    with pytest.raises(ValueError, match=r"ADE_train_00000001_object\.png.*size"):
        b.load_labels(0)


def test_missing_files_are_named(tmp_path: Path) -> None:
    root = build_broden(tmp_path / "b", [ROW_A], good_masks())
    (root / "images" / ROW_A["color"]).unlink()
    (root / "images" / ROW_A["image"]).unlink()
    b = read_broden(root)
    with pytest.raises(ValueError, match=r"ADE_train_00000001_color\.png.*missing"):
        b.load_labels(0)
    with pytest.raises(ValueError, match=r"ADE_train_00000001\.jpg.*missing"):
        b.load_image(0)
    (root / "c_part.csv").unlink()
    with pytest.raises(ValueError, match=r"c_part\.csv.*missing"):
        read_broden(root)
    with pytest.raises(ValueError, match="missing"):
        read_broden(tmp_path / "nowhere")


# --- world writers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_scenes() -> list[Scene]:
    """The tiny world's concept scenes."""
    return list(generate_split(TINY, "concept"))


@pytest.fixture(scope="module")
def tiny_written(tmp_path_factory: pytest.TempPathFactory, tiny_scenes: list[Scene]) -> Path:
    """The tiny world's concept scenes written as a Broden directory."""
    root = tmp_path_factory.mktemp("world") / "broden"
    write_broden(root, tiny_scenes, TINY)
    return root


def test_written_labels_read_back_equal_the_scenes(
    tiny_written: Path, tiny_scenes: list[Scene]
) -> None:
    labels = world_labels(TINY)

    def to_global(layers: list[np.ndarray], category: str) -> np.ndarray:
        lookup = np.zeros(max(labels[category]) + 1, dtype=np.int32)
        for local, lab in labels[category].items():
            lookup[local] = lab.number
        return lookup[np.stack(layers)]

    b = read_broden(tiny_written)
    assert len(b) == len(tiny_scenes)
    multi = 0
    for i, scene in enumerate(tiny_scenes):
        np.testing.assert_array_equal(b.load_image(i), scene.image)
        got = b.load_labels(i)
        assert set(got) == {"color", "object", "part", "scene", "texture"}
        np.testing.assert_array_equal(got["color"], to_global([scene.color], "color"))
        np.testing.assert_array_equal(got["object"], to_global(scene.object_layers, "object"))
        np.testing.assert_array_equal(got["part"], to_global(scene.part_layers, "part"))
        assert b.image_level(i) == {
            "scene": [labels["scene"][scene.scene].number],
            "texture": [labels["texture"][scene.texture].number],
        }
        assert b.label_names[b.image_level(i)["scene"][0]] == class_names(TINY)[scene.class_index]
        multi += len(scene.object_layers) > 1
    assert multi > 0  # the round trip covered ";"-joined multi-layer cells


def test_written_index_has_exactly_the_broden_columns(tiny_written: Path) -> None:
    header, rows = read_rows(tiny_written / "index.csv")
    assert header == list(INDEX_COLUMNS)
    assert all(row["material"] == "" for row in rows)
    assert all((tiny_written / "images" / row["image"]).is_file() for row in rows)


def test_written_tables_are_consistent(tiny_written: Path) -> None:
    _, label_rows = read_rows(tiny_written / "label.csv")
    labels = {int(r["number"]): r for r in label_rows}
    assert sorted(labels) == list(range(1, len(labels) + 1))
    expected_names = [
        *COLOR_NAMES,
        *SHAPES,
        *(f"{s} rim" for s in SHAPES),
        *class_names(TINY),
        *TEXTURES,
    ]
    assert [labels[n]["name"] for n in sorted(labels)] == expected_names
    # frequency / coverage recomputed from the written data
    b = read_broden(tiny_written)
    freq = dict.fromkeys(labels, 0)
    cover = dict.fromkeys(labels, 0.0)
    cat_freq: dict[str, int] = {}
    for i in range(len(b)):
        for cat, stack in b.load_labels(i).items():
            cat_freq[cat] = cat_freq.get(cat, 0) + 1
            for n in np.unique(stack[stack != 0]):
                freq[int(n)] += 1
                cover[int(n)] += float((stack == n).any(axis=0).mean())
    for n, row in labels.items():
        cat = row["category"].split("(")[0]
        assert row["category"] == f"{cat}({freq[n]})" and int(row["frequency"]) == freq[n]
        assert float(row["coverage"]) == pytest.approx(
            cover[n] / freq[n] if freq[n] else 0, abs=1e-5
        )
    _, cat_rows = read_rows(tiny_written / "category.csv")
    assert [r["name"] for r in cat_rows] == ["color", "object", "part", "scene", "texture"]
    for row in cat_rows:
        members = [n for n, r in labels.items() if r["category"].startswith(row["name"] + "(")]
        assert (int(row["first"]), int(row["last"]), int(row["count"])) == (
            min(members),
            max(members),
            len(members),
        )
        assert int(row["frequency"]) == cat_freq[row["name"]] == len(b)
        header, code_rows = read_rows(tiny_written / f"c_{row['name']}.csv")
        assert header == list(CODE_COLUMNS)
        assert [int(r["code"]) for r in code_rows] == list(range(1, len(members) + 1))
        assert [int(r["number"]) for r in code_rows] == members
        for r in code_rows:
            lab = labels[int(r["number"])]
            assert (r["name"], r["frequency"], r["coverage"]) == (
                lab["name"],
                lab["frequency"],
                lab["coverage"],
            )
    assert not (tiny_written / "c_material.csv").exists()


def test_concept_set_is_the_concept_split(tmp_path: Path, tiny_scenes: list[Scene]) -> None:
    write_concept_set(tmp_path / "concepts", TINY)
    b = read_broden(tmp_path / "concepts")
    assert len(b) == TINY.concept_images
    for i in (0, 7, len(b) - 1):
        np.testing.assert_array_equal(b.load_image(i), tiny_scenes[i].image)
    assert os.listdir(tmp_path) == ["concepts"]  # no temporary siblings left behind


def test_image_folder_layout_and_content(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    write_image_folder(root, TINY)
    names = class_names(TINY)
    for split, per_class in (("train", TINY.train_per_class), ("val", TINY.val_per_class)):
        assert sorted(os.listdir(root / split)) == names
        for name in names:
            assert sorted(os.listdir(root / split / name)) == [
                f"{j:05d}.png" for j in range(per_class)
            ]
        for k, scene in enumerate(generate_split(TINY, split)):
            path = root / split / names[scene.class_index] / f"{k // TINY.n_classes:05d}.png"
            np.testing.assert_array_equal(np.asarray(Image.open(path)), scene.image)
    # rewriting replaces the directory wholesale
    (root / "stale.txt").write_text("x")
    write_image_folder(root, TINY)
    assert sorted(os.listdir(root)) == ["train", "val"] and os.listdir(tmp_path) == ["folder"]


def test_interrupted_write_leaves_nothing(tmp_path: Path, tiny_scenes: list[Scene]) -> None:
    def failing() -> Iterator[Scene]:
        yield from tiny_scenes[:3]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_broden(tmp_path / "broden", failing(), TINY)
    assert os.listdir(tmp_path) == []
    # an existing complete output survives an interrupted rewrite untouched
    write_broden(tmp_path / "broden", tiny_scenes[:2], TINY)
    with pytest.raises(RuntimeError):
        write_broden(tmp_path / "broden", failing(), TINY)
    assert os.listdir(tmp_path) == ["broden"] and len(read_broden(tmp_path / "broden")) == 2
