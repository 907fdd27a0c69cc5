"""Broden-layout concept sets (NetDissect): mask codec, a writer and a validating reader.

Layout under a root directory:

- images/: images and mask PNGs; every path in index.csv is relative to images/.
- index.csv: image,split,ih,iw,sh,sw,color,object,part,material,scene,texture. Pixel-level cells
  (color, object, part, material) name mask PNGs, ";"-joined when a category has several
  layers; image-level cells (scene, texture) hold label numbers, ";"-joined if several. An empty
  cell means the image has no label of that category.
- label.csv: number,name,category,frequency,coverage,syns. Numbers are global across categories
  and start at 1 (0 = unlabelled); category reads like "color(123)" (images with the label in that
  category), ";"-joined when a label belongs to several categories.
- category.csv: name,first,last,count,frequency (label number range, label count, images).
- c_<category>.csv: code,number,name,frequency,coverage (dense category-local codes from 1).

A mask PNG stores the global label number of each pixel as R + 256 * G (B = 0).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

META_COLUMNS: tuple[str, ...] = ("image", "split", "ih", "iw", "sh", "sw")
PIXEL_CATEGORIES: tuple[str, ...] = ("color", "object", "part", "material")
IMAGE_CATEGORIES: tuple[str, ...] = ("scene", "texture")
CATEGORIES: tuple[str, ...] = PIXEL_CATEGORIES + IMAGE_CATEGORIES
INDEX_COLUMNS: tuple[str, ...] = META_COLUMNS + CATEGORIES
LABEL_COLUMNS: tuple[str, ...] = ("number", "name", "category", "frequency", "coverage", "syns")
CATEGORY_COLUMNS: tuple[str, ...] = ("name", "first", "last", "count", "frequency")
CODE_COLUMNS: tuple[str, ...] = ("code", "number", "name", "frequency", "coverage")
MAX_LABEL = 65535

_INT = re.compile(r"\d+")
_CATEGORY_ENTRY = re.compile(r"\s*([^()]+?)\s*(?:\((\d*)\))?\s*")


# ---------------------------------------------------------------------------------------------
# Mask codec.


def encode_mask(ids: np.ndarray) -> np.ndarray:
    """Encode a 2-D array of label numbers as an (h, w, 3) uint8 image with id = R + 256 * G."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"mask must have an integer dtype, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_LABEL):
        raise ValueError(f"mask ids must be in 0..{MAX_LABEL}, got {ids.min()}..{ids.max()}")
    rgb = np.zeros(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids & 0xFF
    rgb[..., 1] = ids >> 8
    return rgb


def decode_mask(rgb: np.ndarray) -> np.ndarray:
    """Decode an (h, w, >=3) mask image into int32 label numbers R + 256 * G."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"mask image must have shape (h, w, 3), got {rgb.shape}")
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


def save_mask(path: str | Path, ids: np.ndarray) -> None:
    """Write label numbers to a mask PNG."""
    Image.fromarray(encode_mask(ids), mode="RGB").save(path, compress_level=1)


def load_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG into int32 label numbers; ValueError naming the file if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: mask file is missing")
    try:
        with Image.open(path) as img:
            return decode_mask(np.asarray(img.convert("RGB")))
    except OSError as error:  # PIL: unidentified or truncated image
        raise ValueError(f"{path}: cannot read mask PNG: {error}") from error


# ---------------------------------------------------------------------------------------------
# Writer.


@dataclass(frozen=True)
class LabelDef:
    """A label to write: global number (>= 1), unique name, and its one category."""

    number: int
    name: str
    category: str


class BrodenWriter:
    """Writes images and masks into `root` and, on `close()`, the CSV tables with statistics.

    Coverage in label.csv and c_*.csv is the mean fraction of an image's pixels carrying the
    label, over the images that contain it (1.0 for image-level labels). Categories without
    labels (e.g. material in a world that has none) keep their index.csv column, left empty,
    but get no category.csv row or c_*.csv file, as NetDissect expects.
    """

    def __init__(self, root: str | Path, labels: Sequence[LabelDef]) -> None:
        """Check the label table and create root/images."""
        self.root = Path(root)
        self.labels = sorted(labels, key=lambda lab: lab.number)
        numbers = [lab.number for lab in self.labels]
        names = [lab.name for lab in self.labels]
        if len(set(numbers)) != len(numbers) or (
            numbers and not 1 <= numbers[0] <= numbers[-1] <= MAX_LABEL
        ):
            raise ValueError(f"label numbers must be unique and in 1..{MAX_LABEL}")
        if len(set(names)) != len(names):
            raise ValueError("label names must be unique across categories")
        unknown = {lab.category for lab in self.labels} - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; expected some of {CATEGORIES}")
        top = numbers[-1] if numbers else 0
        self._category_of = np.full(top + 1, -1, dtype=np.int32)
        for lab in self.labels:
            self._category_of[lab.number] = CATEGORIES.index(lab.category)
        self._frequency = np.zeros(top + 1, dtype=np.int64)
        self._coverage = np.zeros(top + 1, dtype=np.float64)
        self._category_frequency = dict.fromkeys(CATEGORIES, 0)
        self._rows: list[dict[str, str]] = []
        (self.root / "images").mkdir(parents=True, exist_ok=True)

    def _check_ids(self, ids: np.ndarray, category: str, where: str) -> None:
        """Raise ValueError if ids hold numbers that are not labels of `category`."""
        present = np.unique(ids)
        present = present[present != 0]
        bad = (present < 0) | (present >= len(self._category_of))
        if not bad.any():
            bad = self._category_of[present] != CATEGORIES.index(category)
        if bad.any():
            raise ValueError(f"{where}: ids {present[bad].tolist()} are not {category} labels")

    def add(
        self,
        stem: str,
        image: np.ndarray,
        pixel: Mapping[str, Sequence[np.ndarray]],
        image_level: Mapping[str, Sequence[int]],
        split: str = "train",
    ) -> None:
        """Write one image (PNG at images/<stem>.png) with its mask layers and image labels.

        `pixel` maps a pixel-level category to its layers (2-D global label numbers, all of one
        shape); `image_level` maps an image-level category to label numbers. Empty entries and
        all-zero layers are left out.
        """
        image = np.asarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{stem}: image must have shape (h, w, 3), got {image.shape}")
        shapes = {layer.shape for layers in pixel.values() for layer in layers}
        if len(shapes) > 1:
            raise ValueError(f"{stem}: mask layers differ in shape: {sorted(shapes)}")
        sh, sw = shapes.pop() if shapes else image.shape[:2]
        path = self.root / "images" / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="RGB").save(path, compress_level=1)
        row = {
            "image": f"{stem}.png",
            "split": split,
            "ih": str(image.shape[0]),
            "iw": str(image.shape[1]),
        }
        row |= {"sh": str(sh), "sw": str(sw)} | dict.fromkeys(CATEGORIES, "")
        for category, layers in pixel.items():
            if category not in PIXEL_CATEGORIES:
                raise ValueError(f"{stem}: {category!r} is not a pixel-level category")
            layers = [np.asarray(layer) for layer in layers if np.any(layer)]
            for layer in layers:
                self._check_ids(layer, category, stem)
            names = [f"{stem}_{category}.png"] if len(layers) == 1 else []
            names = names or [f"{stem}_{category}_{k + 1}.png" for k in range(len(layers))]
            for name, layer in zip(names, layers, strict=True):
                save_mask(self.root / "images" / name, layer)
            row[category] = ";".join(names)
            if layers:
                self._count(category, np.stack(layers))
        for category, numbers in image_level.items():
            if category not in IMAGE_CATEGORIES:
                raise ValueError(f"{stem}: {category!r} is not an image-level category")
            numbers = sorted({int(n) for n in numbers})
            self._check_ids(np.array(numbers, dtype=np.int64), category, stem)
            row[category] = ";".join(map(str, numbers))
            if numbers:
                self._count(category, np.array(numbers).reshape(-1, 1, 1))
        self._rows.append(row)

    def _count(self, category: str, stack: np.ndarray) -> None:
        """Add one image's labels to the frequency and coverage statistics."""
        self._category_frequency[category] += 1
        flat = stack.reshape(stack.shape[0], -1)
        for number in np.unique(flat[flat != 0]):
            self._frequency[number] += 1
            self._coverage[number] += float((flat == number).any(axis=0).mean())

    def close(self) -> None:
        """Write index.csv, label.csv, category.csv and c_<category>.csv."""
        _write_csv(self.root / "index.csv", INDEX_COLUMNS, self._rows)

        def stats(lab: LabelDef) -> tuple[str, str]:
            freq = int(self._frequency[lab.number])
            return str(freq), f"{self._coverage[lab.number] / freq:.6f}" if freq else "0"

        label_rows, category_rows = [], []
        for lab in self.labels:
            freq, cov = stats(lab)
            category = f"{lab.category}({freq})"
            label_rows.append(
                dict(
                    zip(
                        LABEL_COLUMNS,
                        (str(lab.number), lab.name, category, freq, cov, ""),
                        strict=True,
                    )
                )
            )
        for category in CATEGORIES:
            members = [lab for lab in self.labels if lab.category == category]
            if not members:
                continue
            numbers = [lab.number for lab in members]
            values = (
                category,
                min(numbers),
                max(numbers),
                len(members),
                self._category_frequency[category],
            )
            category_rows.append(dict(zip(CATEGORY_COLUMNS, map(str, values), strict=True)))
            code_rows = [
                dict(
                    zip(
                        CODE_COLUMNS,
                        (str(code), str(lab.number), lab.name, *stats(lab)),
                        strict=True,
                    )
                )
                for code, lab in enumerate(members, start=1)
            ]
            _write_csv(self.root / f"c_{category}.csv", CODE_COLUMNS, code_rows)
        _write_csv(self.root / "label.csv", LABEL_COLUMNS, label_rows)
        _write_csv(self.root / "category.csv", CATEGORY_COLUMNS, category_rows)


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> None:
    """Write rows as a CSV file with exactly these columns."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------
# Reader.


@dataclass(frozen=True)
class BrodenRecord:
    """One index.csv row: image path (relative to images/), split, sizes and label cells.

    `cells` maps each category with a non-empty cell to its entries: mask paths (relative to
    images/) for pixel-level data, label numbers for image-level data.
    """

    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    cells: dict[str, tuple[str | int, ...]]


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Read a CSV file into dict rows; ValueError naming the file if missing or short of columns."""
    if not path.is_file():
        raise ValueError(f"{path}: file is missing")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}")
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _parse_int(value: str, path: Path, line: int, column: str) -> int:
    """Parse a non-negative integer cell, naming the file, line and column on failure."""
    if not _INT.fullmatch(value):
        raise ValueError(f"{path}: line {line}: column {column} must be an integer, got {value!r}")
    return int(value)


def _parse_float(value: str) -> float:
    """Parse an optional float statistic (NaN when empty or unparseable)."""
    try:
        return float(value)
    except ValueError:
        return float("nan")


def _parse_coverage(value: str, path: Path, line: int) -> float:
    """Parse a c_<category>.csv coverage cell (a finite number >= 0), naming file and line."""
    try:
        coverage = float(value)
    except ValueError:
        coverage = float("nan")
    if not np.isfinite(coverage) or coverage < 0:
        raise ValueError(f"{path}: line {line}: coverage must be a number >= 0, got {value!r}")
    return coverage


def _parse_label_categories(value: str, path: Path, line: int) -> dict[str, int]:
    """Parse a label.csv category cell like "material(36);object(3)" into {category: count}."""
    result = {}
    for entry in filter(None, value.split(";")):
        match = _CATEGORY_ENTRY.fullmatch(entry)
        if not match:
            raise ValueError(f"{path}: line {line}: bad category entry {entry!r}")
        result[match.group(1)] = int(match.group(2) or 0)
    return result


class Broden:
    """A Broden-layout directory (ours or the NetDissect release), read and checked.

    Attributes: `categories` (from category.csv, in file order), `labels` (DataFrame indexed by
    label number with name, category (the primary one), categories (raw cell), frequency,
    coverage), `label_names` and `category_of_label` (number -> name / primary category),
    `label_categories` (number -> {category: count}, from label.csv), `category_labels`
    (category -> global numbers in code order, from c_<category>.csv), `category_coverage`
    (category -> {number: coverage}, from c_<category>.csv) and `records`.

    The primary category of a label is NetDissect's: among the categories whose c_<category>.csv
    lists it, the one with the largest coverage there; a tie goes to the later category in
    category.csv order (NetDissect takes the max of (coverage, category index)). A label that no
    c_<category>.csv lists has no primary category ("") and is no concept.
    """

    def __init__(self, root: str | Path) -> None:
        """Read index.csv, label.csv, category.csv and c_*.csv under `root`."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: Broden directory is missing")
        self._read_labels()
        self._read_categories()
        self._assign_primary_categories()
        self._read_index()

    def _read_labels(self) -> None:
        """Read label.csv into the label tables and a lookup of known numbers."""
        path = self.root / "label.csv"
        rows = _read_csv(path, ("number", "name", "category"))
        numbers, names, raws, freqs, covs = [], [], [], [], []
        self.label_categories: dict[int, dict[str, int]] = {}
        for line, row in enumerate(rows, start=2):
            number = _parse_int(row["number"], path, line, "number")
            if number > MAX_LABEL or number in self.label_categories:
                raise ValueError(
                    f"{path}: line {line}: label number {number} is duplicated or too large"
                )
            cats = _parse_label_categories(row["category"], path, line)
            self.label_categories[number] = cats
            numbers.append(number)
            names.append(row["name"])
            raws.append(row["category"])
            freqs.append(_parse_float(row.get("frequency", "")))
            covs.append(_parse_float(row.get("coverage", "")))
        self.labels = pd.DataFrame(
            {
                "name": names,
                "category": "",
                "categories": raws,
                "frequency": freqs,
                "coverage": covs,
            },
            index=pd.Index(numbers, name="number"),
        )
        self.label_names: dict[int, str] = dict(zip(numbers, names, strict=True))
        self._known = np.zeros(max(numbers, default=0) + 1, dtype=bool)
        self._known[numbers] = True
        self._known[0] = True  # unlabelled

    def _read_categories(self) -> None:
        """Read category.csv and every c_<category>.csv."""
        path = self.root / "category.csv"
        self.categories: list[str] = [row["name"] for row in _read_csv(path, ("name",))]
        self.category_labels: dict[str, list[int]] = {}
        self.category_coverage: dict[str, dict[int, float]] = {}
        for category in self.categories:
            code_path = self.root / f"c_{category}.csv"
            rows = _read_csv(code_path, ("code", "number", "coverage"))
            pairs, coverage = [], {}
            for line, row in enumerate(rows, start=2):
                code = _parse_int(row["code"], code_path, line, "code")
                number = _parse_int(row["number"], code_path, line, "number")
                if number and number not in self.label_names:
                    raise ValueError(
                        f"{code_path}: line {line}: label {number} is not in label.csv"
                    )
                pairs.append((code, number))
                if number:
                    coverage[number] = _parse_coverage(row["coverage"], code_path, line)
            self.category_labels[category] = [number for _, number in sorted(pairs) if number]
            self.category_coverage[category] = coverage

    def _assign_primary_categories(self) -> None:
        """Primary category of every label: largest c_<category>.csv coverage, ties to the later."""
        self.category_of_label: dict[int, str] = {}
        for number in self.label_names:
            listed = [
                (coverage[number], k, category)
                for k, (category, coverage) in enumerate(self.category_coverage.items())
                if number in coverage
            ]
            self.category_of_label[number] = max(listed)[2] if listed else ""
        self.labels["category"] = [self.category_of_label[n] for n in self.labels.index]

    def _read_index(self) -> None:
        """Read index.csv into records."""
        path = self.root / "index.csv"
        rows = _read_csv(path, META_COLUMNS + tuple(self.categories))
        self.records: list[BrodenRecord] = []
        for line, row in enumerate(rows, start=2):
            sizes = {key: _parse_int(row[key], path, line, key) for key in ("ih", "iw", "sh", "sw")}
            cells = {}
            for category, value in row.items():
                if category in META_COLUMNS or not value:
                    continue
                entries = [e.strip() for e in value.split(";") if e.strip()]
                if entries:
                    cells[category] = tuple(int(e) if _INT.fullmatch(e) else e for e in entries)
            self.records.append(BrodenRecord(row["image"], row["split"], cells=cells, **sizes))

    def __len__(self) -> int:
        """Number of images."""
        return len(self.records)

    def image_path(self, i: int) -> Path:
        """Absolute path of image i."""
        return self.root / "images" / self.records[i].image

    def load_image(self, i: int) -> np.ndarray:
        """Image i as (ih, iw, 3) uint8 RGB; ValueError naming the file if missing or mis-sized."""
        record, path = self.records[i], self.image_path(i)
        if not path.is_file():
            raise ValueError(f"{path}: image file is missing")
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"))
        except OSError as error:  # PIL: unidentified or truncated image
            raise ValueError(f"{path}: cannot read image: {error}") from error
        if array.shape[:2] != (record.ih, record.iw):
            raise ValueError(
                f"{path}: image has size {array.shape[:2]}, index.csv says {(record.ih, record.iw)}"
            )
        return array

    def image_level(self, i: int) -> dict[str, list[int]]:
        """Image-level labels of image i: categories whose cell holds label numbers only."""
        return {
            category: list(entries)
            for category, entries in self.records[i].cells.items()
            if all(isinstance(e, int) for e in entries)
        }

    def load_labels(self, i: int) -> dict[str, np.ndarray]:
        """Labels of image i per category present, as int32 (layers, sh, sw) global numbers.

        Pixel-level layers come from the mask PNGs; an image-level label fills a whole layer.
        """
        record = self.records[i]
        result = {}
        for category, entries in record.cells.items():
            stack = np.empty((len(entries), record.sh, record.sw), dtype=np.int32)
            for k, entry in enumerate(entries):
                if isinstance(entry, int):
                    where, ids = f"{self.root / 'index.csv'}: image {record.image}", np.int32(entry)
                else:
                    path = self.root / "images" / entry
                    where, ids = str(path), load_mask(path)
                    if ids.shape != (record.sh, record.sw):
                        raise ValueError(
                            f"{path}: mask has size {ids.shape}, "
                            f"index.csv says {(record.sh, record.sw)}"
                        )
                self._check_known(ids, where, category)
                stack[k] = ids
            result[category] = stack
        return result

    def _check_known(self, ids: np.ndarray, where: str, category: str) -> None:
        """Raise ValueError if ids hold label numbers that label.csv does not define."""
        ids = np.asarray(ids)
        top = len(self._known) - 1
        bad = (ids > top) | (ids < 0)
        if not bad.any():
            bad = ~self._known[ids]
        if bad.any():
            missing = np.unique(ids[bad])[:10].tolist()
            raise ValueError(f"{where}: {category} ids {missing} are not in label.csv")


def read_broden(root: str | Path) -> Broden:
    """Read and check a Broden-layout directory."""
    return Broden(root)
