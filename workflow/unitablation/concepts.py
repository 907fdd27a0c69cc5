"""Network Dissection concept IoU of units against a Broden-layout concept set.

Rules (docs/definitions.md, concept alignment):

- Threshold: T_u = numpy.quantile(values, 1 - quantile) with numpy's default linear
  interpolation, exact, over the N * h * w activations of unit u on all concept images at native
  map resolution (quantile 0.005: the 99.5th percentile).
- Mask: the map upsampled bilinearly to the image's segmentation size (sh, sw) with
  torch.nn.functional.interpolate(mode="bilinear", align_corners=False), then > T_u (strict).
  When (h, w) == (sh, sw) the upsampling is the identity.
- Labels: a label's column is its primary category's (Broden.category_of_label: largest
  coverage in c_<category>.csv). An occurrence of label c is one mask layer, of any category of
  category.csv, holding c at a pixel; an image-level label (scene, texture) is one occurrence at
  every pixel of its image. Category k is present in an image when the image holds an occurrence
  of some label whose primary category is k (NetDissect's count_act_with_labelcat).
- Counting (`counting`, one of COUNTING), as NetDissect and NetDissect-Lite tally:
  - "netdissect" (the original NetDissect): I_uc = sum over images and mask pixels of the
    number of occurrences of c there (a pixel holding c in two layers counts twice), G_c = the
    same over all pixels, A_uc = sum of |mask| over the images in which c's primary category is
    present.
  - "lite" (NetDissect-Lite's tally): I and G as "netdissect"; an image adds |mask| to A_uc
    only when the mask covers an occurrence of a label of c's primary category (an image-level
    label covers every pixel, so it always does when the mask is not empty).
  - "union" (this project's rule before NetDissect's counting): a pixel holding c counts once
    whatever the number of layers holding it; A as "netdissect".
- IoU_uc = I_uc / (A_uc + G_c - I_uc + 1e-10). Under "netdissect" and "lite" I_uc may exceed
  A_uc (a mask pixel holding c in two layers adds 2 to I, 1 to A), as in NetDissect.

Columns run over the labels of label.csv whose primary category is listed in category.csv, in
ascending label number (`ConceptResult.label_numbers`). Maps are read one block of units at a
time, in two streaming passes over the images: the first keeps, per unit, only the activations
the exact quantile can need (its top `quantile` fraction, or the bottom side when that is
smaller) and each image's spatial max; the second counts in image batches. From a store
(`store_reader`) no pass holds more than `rows_per_read` images of maps, so memory does not grow
with the concept set beyond O(N x units) per-image maxima, the kept top activations and the
labels, decoded once into compact per-image "combination maps" (each pixel's index into the
image's distinct combinations of label occurrence counts, uint8/uint16), so that counting is one
index_add of the batch's masks per combination and one small matrix product per batch. One
decoding serves every counting rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd
import torch

from unitablation.broden import Broden
from unitablation.masks import upsample_torch
from unitablation.rotation import rotate
from unitablation.store import ActivationStore

#: Added to IoU denominators, as in NetDissect.
EPSILON = 1e-10
#: Counting rules (config `concepts.counting`; the module docstring defines them).
COUNTING: tuple[str, ...] = ("netdissect", "lite", "union")


def check_counting(counting: str) -> None:
    """Raise ValueError unless counting names one of COUNTING."""
    if counting not in COUNTING:
        raise ValueError(f"counting must be one of {', '.join(COUNTING)}, got {counting!r}")


@dataclass
class ConceptResult:
    """Per-unit concept IoUs and counts over a Broden concept set; columns are label numbers."""

    iou: np.ndarray  # (U, L) float64, columns in label_numbers order
    label_numbers: np.ndarray  # (L,) int64, ascending Broden label numbers
    label_names: list[str]  # (L,)
    label_categories: list[str]  # (L,) primary category of each label
    categories: list[str]  # category.csv order
    thresholds: np.ndarray  # (U,) float64, T_u
    intersection: np.ndarray  # (U, L) int64, I_uc
    activation: np.ndarray  # (U, len(categories)) int64, A per category (A_uc = column of c's)
    ground_truth: np.ndarray  # (L,) int64, G_c
    top_images: np.ndarray  # (U, k) int64, store rows of the top images by spatial max
    top_scores: np.ndarray  # (U, k) float64, their spatial max activations
    quantile: float
    counting: str = "netdissect"

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """(column of the best label, its IoU) per unit; ties go to the lowest label number.

        A unit whose best IoU is 0 overlaps no concept (e.g. a dead unit: T_u = 0 and its mask,
        map > T_u, is empty): its column is -1, not the first label an argmax over zeros names.
        """
        if not self.iou.shape[1]:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        column = np.argmax(self.iou, axis=1)
        best = self.iou[np.arange(len(column)), column]
        return np.where(best > 0, column, -1), best

    def table(self, iou_threshold: float | None = 0.04) -> pd.DataFrame:
        """One row per unit: best concept, detector flag, threshold, best IoU per category.

        With iou_threshold None the table has no `is_detector` column (`tables.with_detectors`
        adds it later, so that the threshold is not an input of the IoU computation).
        """
        units = self.iou.shape[0]
        if not self.iou.shape[1]:
            raise ValueError("the concept set has no labels")
        column, best = self.best()
        names = np.array([*self.label_names, ""], dtype=object)  # column -1: no concept
        cats = np.array([*self.label_categories, ""], dtype=object)
        data: dict[str, object] = {
            "unit": np.arange(units),
            "iou": best,
            "concept": names[column],
            "concept_category": cats[column],
            "is_detector": best >= (np.nan if iou_threshold is None else iou_threshold),
            "threshold": self.thresholds,
        }
        if iou_threshold is None:
            del data["is_detector"]
        for category in self.categories:
            members = np.flatnonzero(cats[:-1] == category)
            if not len(members):
                continue
            local = members[np.argmax(self.iou[:, members], axis=1)]
            local_iou = self.iou[np.arange(units), local]
            data[f"iou_{category}"] = local_iou
            data[f"concept_{category}"] = names[np.where(local_iou > 0, local, -1)]
        return pd.DataFrame(data)


@dataclass(frozen=True)
class _ImageLabels:
    """One image's labels, compact: combination map, combinations and present categories."""

    combo_map: np.ndarray  # (sh * sw,) uint8/uint16/int32 index into combos
    combos: np.ndarray  # (n_combos, n_labels) uint16, occurrences of each label per combination
    combo_pixels: np.ndarray  # (n_combos,) int64, pixels of each combination
    columns: np.ndarray  # (n_labels,) int64 result columns of the labels, ascending
    present: np.ndarray  # (n_categories,) bool, an occurrence of a label of the category
    size: tuple[int, int]  # (sh, sw)


@dataclass(frozen=True)
class _LabelIndex:
    """The result columns: label numbers, names, categories and a number -> column lookup."""

    numbers: np.ndarray
    names: list[str]
    categories: list[str]
    category_names: list[str]
    column_of: np.ndarray  # number -> column, -1 when not a column
    category_index_of: np.ndarray  # number -> category index, -1 when not a column


def _label_index(broden: Broden) -> _LabelIndex:
    """Columns over label.csv labels whose primary category is in category.csv."""
    category_names = list(broden.categories)
    numbers = np.array(
        sorted(n for n, cat in broden.category_of_label.items() if cat in category_names),
        dtype=np.int64,
    )
    top = max(broden.category_of_label, default=0)
    column_of = np.full(top + 1, -1, dtype=np.int64)
    column_of[numbers] = np.arange(len(numbers))
    category_index_of = np.full(top + 1, -1, dtype=np.int64)
    for n in numbers:
        category_index_of[n] = category_names.index(broden.category_of_label[int(n)])
    return _LabelIndex(
        numbers=numbers,
        names=[broden.label_names[int(n)] for n in numbers],
        categories=[broden.category_of_label[int(n)] for n in numbers],
        category_names=category_names,
        column_of=column_of,
        category_index_of=category_index_of,
    )


def _occurrences(broden: Broden, i: int, index: _LabelIndex) -> dict[int, np.ndarray]:
    """Per result column, image i's (sh * sw,) uint16 count of layers holding the label."""
    record = broden.records[i]
    size = (record.sh, record.sw)
    counts: dict[int, np.ndarray] = {}
    for category, stack in broden.load_labels(i).items():
        if category not in index.category_names:
            continue
        if stack.shape[1:] != size:
            raise ValueError(
                f"{broden.root}: image {record.image}: {category} labels have size "
                f"{stack.shape[1:]}, index.csv says {size}"
            )
        flat = stack.reshape(stack.shape[0], -1)
        values = np.unique(flat)
        values = values[(values > 0) & (values < len(index.column_of))]
        for number in values[index.column_of[values] >= 0]:
            column = int(index.column_of[number])
            hit = (flat == number).sum(axis=0, dtype=np.uint16)  # layers holding it, per pixel
            counts[column] = counts[column] + hit if column in counts else hit
    return counts


def _image_labels(broden: Broden, i: int, index: _LabelIndex) -> _ImageLabels:
    """Decode image i's label occurrences into a combination map (any category's layers)."""
    record = broden.records[i]
    size = (record.sh, record.sw)
    pixels = size[0] * size[1]
    counts = _occurrences(broden, i, index)
    present = np.zeros(len(index.category_names), dtype=bool)
    if not counts:
        return _ImageLabels(
            np.zeros(pixels, np.uint8),
            np.zeros((1, 0), np.uint16),
            np.array([pixels], np.int64),
            np.zeros(0, np.int64),
            present,
            size,
        )
    columns = np.array(sorted(counts), dtype=np.int64)
    present[index.category_index_of[index.numbers[columns]]] = True
    matrix = np.stack([counts[int(c)] for c in columns], axis=1)  # (pixels, n_labels) uint16
    bits = max(1, int(matrix.max()).bit_length())
    if matrix.shape[1] * bits < 63:  # one int64 key per pixel: a fast 1-D unique
        weights = np.int64(1) << (bits * np.arange(matrix.shape[1], dtype=np.int64))
        packed = matrix.astype(np.int64) @ weights
        keys, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
    else:
        keys, first, inverse = np.unique(matrix, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    dtype = np.uint8 if len(keys) <= 256 else np.uint16 if len(keys) <= 65536 else np.int32
    return _ImageLabels(
        inverse.astype(dtype),
        matrix[first],
        np.bincount(inverse, minlength=len(keys)).astype(np.int64),
        columns,
        present,
        size,
    )


def _counted(combos: np.ndarray, counting: str) -> np.ndarray:
    """Occurrence counts as a counting rule counts them: "union" counts a label once per pixel."""
    return (combos > 0).astype(np.int64) if counting == "union" else combos.astype(np.int64)


@dataclass(frozen=True)
class ConceptLabels:
    """A Broden set's labels decoded once (compact per-image maps), reusable across layers."""

    root: str
    index: _LabelIndex
    images: list[_ImageLabels]

    def __len__(self) -> int:
        """Number of concept images."""
        return len(self.images)

    def ground_truth(self, counting: str = "netdissect") -> np.ndarray:
        """(L,) int64 G_c under a counting rule: occurrences over all pixels of all images."""
        check_counting(counting)
        result = np.zeros(len(self.index.numbers), dtype=np.int64)
        for item in self.images:
            if len(item.columns):
                result[item.columns] += item.combo_pixels @ _counted(item.combos, counting)
        return result


def concept_labels(broden: Broden) -> ConceptLabels:
    """Decode every image's label occurrences (one decoding serves every counting rule)."""
    index = _label_index(broden)
    images = [_image_labels(broden, i, index) for i in range(len(broden.records))]
    return ConceptLabels(str(broden.root), index, images)


def _batches(labels: list[_ImageLabels], image_batch: int) -> list[range]:
    """Consecutive image ranges of at most image_batch images sharing one segmentation size."""
    result: list[range] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or i - start == image_batch or labels[i].size != labels[start].size:
            result.append(range(start, i))
            start = i
    return result


@dataclass(frozen=True)
class _Batch:
    """Label structures of one image batch: per-pixel global combination ids and indicators."""

    images: range
    size: tuple[int, int]
    combo_labels: torch.Tensor  # (n_combos, n_cols) float64, counted occurrences per combination
    combo_categories: torch.Tensor  # (n_combos, n_categories) int64 1 where a label of it occurs
    columns: np.ndarray  # (n_cols,) result columns
    present: torch.Tensor  # (B, n_categories) int64, category present in the image
    offsets: np.ndarray  # (B,) first global combination id of each image


def _batch(labels: ConceptLabels, images: range, counting: str) -> _Batch:
    """Stack the compact labels of a batch of images into one indexing problem."""
    items = [labels.images[i] for i in images]
    columns = np.unique(np.concatenate([item.columns for item in items]))
    offsets = np.concatenate([[0], np.cumsum([len(item.combos) for item in items])])
    combo_labels = np.zeros((offsets[-1], len(columns)), dtype=np.float64)
    for item, offset in zip(items, offsets, strict=False):
        local = np.searchsorted(columns, item.columns)
        combo_labels[offset : offset + len(item.combos), local] = _counted(item.combos, counting)
    index = labels.index
    membership = np.zeros((len(columns), len(index.category_names)), dtype=np.int64)
    membership[np.arange(len(columns)), index.category_index_of[index.numbers[columns]]] = 1
    return _Batch(
        images=images,
        size=items[0].size,
        combo_labels=torch.from_numpy(combo_labels),
        combo_categories=torch.from_numpy(((combo_labels > 0) @ membership > 0).astype(np.int64)),
        columns=columns,
        present=torch.from_numpy(np.stack([item.present for item in items]).astype(np.int64)),
        offsets=offsets,
    )


def _touched(batch: _Batch, pair: torch.Tensor, combo: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """(n_pairs, n_categories) int64 1 where a pair's mask covers a label of the category.

    `pair` and `combo` give, for every mask pixel, its (image, unit) pair and its combination.
    """
    n_combos = len(batch.combo_labels)
    keys = torch.unique(pair * n_combos + combo)
    touched = torch.zeros(n_pairs, batch.combo_categories.shape[1], dtype=torch.int64)
    touched.index_add_(0, keys // n_combos, batch.combo_categories[keys % n_combos])
    return (touched > 0).to(torch.int64)


def _combo_ids(labels: list[_ImageLabels], batch: _Batch) -> torch.Tensor:
    """(B, sh * sw) int64 global combination id of every pixel of the batch's images."""
    maps = np.stack([labels[i].combo_map for i in batch.images]).astype(np.int64)
    return torch.from_numpy(maps + batch.offsets[:-1, None])


def float32_below(thresholds: np.ndarray) -> np.ndarray:
    """Largest float32 <= each threshold, so float32 x > it exactly when x > the threshold."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    low = thresholds.astype(np.float32)
    over = low.astype(np.float64) > thresholds
    low[over] = np.nextafter(low[over], np.float32(-np.inf))
    return low


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of (B, C, h, w) maps to size; identity if equal.

    The mask's one definition lives in `masks` (its numpy twin draws the example figures).
    """
    return upsample_torch(maps, size)


def _quantile_positions(count: int, level: float) -> tuple[int, int, float]:
    """Sorted positions (previous, next) and weight numpy.quantile(linear) interpolates with.

    Mirrors numpy's method 7 (Hyndman & Fan: virtual index (n - 1) q, its bounds and its
    interpolation weight) in the same float64 arithmetic, so that interpolating the two order
    statistics gives numpy's result bit for bit (tests/test_concept_streaming.py checks it).
    """
    quantiles = np.asarray(level, dtype=np.float64)
    virtual = (count - 1) * quantiles
    previous = float(np.floor(virtual))
    following = previous + 1.0
    if virtual >= count - 1:
        previous = following = -1.0
    elif virtual < 0:
        previous = following = 0.0
    gamma = float(virtual - previous)
    return int(previous) % count, int(following) % count, gamma


def _lerp(low: np.ndarray, high: np.ndarray, gamma: float) -> np.ndarray:
    """numpy's quantile interpolation between two order statistics (float64)."""
    difference = high - low
    if gamma >= 0.5:
        return high - difference * (1 - gamma)
    return low + difference * gamma


class _StreamingQuantile:
    """Exact numpy.quantile(values, level) of each of b units' values, fed in pieces.

    Keeps only the order statistics the result can need: the `keep` values from the interpolated
    position to the top (or to the bottom, when that side is shorter), so memory is about
    min(level, 1 - level) of the values rather than all of them. Once a unit holds `keep` values,
    a new value on the far side of the kept ones can never be needed and is dropped by one
    comparison, so most values cost no more than that.
    """

    def __init__(self, units: int, count: int, level: float) -> None:
        if count <= 0:
            raise ValueError("no values to take a quantile of")
        self.count = count
        self.previous, self.next, self.gamma = _quantile_positions(count, level)
        self.from_top = count - self.previous <= self.next + 1
        self.keep = count - self.previous if self.from_top else self.next + 1
        self.kept: list[list[np.ndarray]] = [[] for _ in range(units)]
        self.held = np.zeros(units, dtype=np.int64)
        self.bound = np.zeros(units, dtype=np.float32)  # per unit, the innermost kept value
        self.bounded = np.zeros(units, dtype=bool)  # whether the unit holds `keep` values yet
        self.seen = 0
        self.nan = np.zeros(units, dtype=bool)

    def add(self, values: np.ndarray) -> None:
        """Feed (b, m) float32 values (m more values of every unit)."""
        self.seen += values.shape[1]
        self.nan |= np.isnan(values).any(axis=1)
        needed = None
        if self.bounded.any():
            bound = self.bound[:, None]
            needed = values > bound if self.from_top else values < bound
            needed |= ~self.bounded[:, None]
        for u, row in enumerate(values):
            row = row if needed is None else row[needed[u]]
            if len(row):
                self.kept[u].append(row)
                self.held[u] += len(row)
            if self.held[u] >= 2 * self.keep + 4096:
                self._compact(u)

    def _compact(self, u: int) -> None:
        """Cut unit u's held values down to the `keep` that matter; update its bound."""
        held = np.concatenate(self.kept[u]) if len(self.kept[u]) != 1 else self.kept[u][0]
        if len(held) > self.keep:
            kth = len(held) - self.keep if self.from_top else self.keep - 1
            # Two kth: numpy then uses introselect, much faster than its single-kth path on
            # the many tied zeros of ReLU maps.
            held = np.partition(held, [kth, -1] if self.from_top else [0, kth])
            held = held[kth:] if self.from_top else held[: kth + 1]
            self.bound[u] = held[0] if self.from_top else held[-1]
            self.bounded[u] = True
        self.kept[u], self.held[u] = [held], len(held)

    def result(self) -> np.ndarray:
        """(b,) float64 thresholds, equal to numpy.quantile over all values fed."""
        if self.seen != self.count:
            raise RuntimeError(f"fed {self.seen} values per unit, expected {self.count}")
        offset = self.count - self.keep if self.from_top else 0
        result = np.empty(len(self.kept), dtype=np.float64)
        for u in range(len(self.kept)):
            self._compact(u)
            held = np.sort(self.kept[u][0]).astype(np.float64)
            low, high = held[self.previous - offset], held[self.next - offset]
            result[u] = _lerp(np.float64(low), np.float64(high), self.gamma)
        result[self.nan] = np.nan
        return result


def _block_thresholds(maps: np.ndarray, quantile: float, rows: int = 256) -> np.ndarray:
    """Exact per-unit numpy.quantile(values, 1 - quantile) of an (N, b, h, w) block, float64."""
    units = maps.shape[1]
    if not units:
        return np.zeros(0, np.float64)
    streaming = _StreamingQuantile(units, maps[:, :1].size, 1.0 - quantile)
    for start in range(0, len(maps), rows):
        window = maps[start : start + rows].transpose(1, 0, 2, 3).reshape(units, -1)
        streaming.add(np.ascontiguousarray(window, dtype=np.float32))
    return streaming.result()


def _unit_slices(n_units: int, unit_block: int) -> list[slice]:
    """Consecutive unit blocks covering range(n_units)."""
    if unit_block <= 0:
        raise ValueError(f"unit_block must be > 0, got {unit_block}")
    return [slice(s, min(n_units, s + unit_block)) for s in range(0, n_units, unit_block)]


def _check_quantile(quantile: float) -> None:
    """Raise ValueError unless 0 <= quantile <= 1."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")


def unit_thresholds(
    read_maps: Callable[[slice], np.ndarray],
    n_units: int,
    quantile: float = 0.005,
    unit_block: int = 64,
) -> np.ndarray:
    """T_u = numpy.quantile over all N * h * w activations of each unit, one block at a time."""
    _check_quantile(quantile)
    blocks = [
        _block_thresholds(np.asarray(read_maps(s)), quantile)
        for s in _unit_slices(n_units, unit_block)
    ]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float64)


class StoreMaps:
    """read_maps over a store layer's maps that can also stream rows (see `store_reader`).

    Reads go through aligned windows of `rows_per_read` images (the last window is kept), so a
    pass over the images in order reads each window once and holds one window of one unit block.
    """

    def __init__(self, maps: h5py.Dataset, rotation: np.ndarray | None, rows_per_read: int) -> None:
        if rows_per_read <= 0:
            raise ValueError(f"rows_per_read must be > 0, got {rows_per_read}")
        self.maps = maps
        self.rotation = rotation
        self.window = rows_per_read
        self.n_images = int(maps.shape[0])
        self._last: tuple[tuple[int, int], int, np.ndarray] | None = None

    def _read_window(self, units: slice, start: int) -> np.ndarray:
        """Maps of a block of units over images start .. start + window, float32."""
        key = units.indices(self.maps.shape[1])[:2]
        if self._last is not None and self._last[:2] == (key, start):
            return self._last[2]
        stop = min(self.n_images, start + self.window)
        if self.rotation is None:
            block = np.asarray(self.maps[start:stop, units], dtype=np.float32)
        else:
            # Accumulated in float64 and rounded once: a float32 product's rounding depends on
            # the kernel BLAS picks for the block's shape (units, images, threads), and unit_block
            # and image_batch must not change the thresholds.
            directions = torch.from_numpy(np.asarray(self.rotation[units], dtype=np.float64))
            maps = torch.from_numpy(np.asarray(self.maps[start:stop], np.float64))
            block = rotate(maps, directions).to(torch.float32).numpy()
        self._last = (key, start, block)
        return block

    def rows(self, units: slice, start: int, stop: int) -> np.ndarray:
        """Maps of a block of units over images start .. stop, float32 (stop - start, b, h, w)."""
        pieces = []
        for window in range(start - start % self.window, stop, self.window):
            block = self._read_window(units, window)
            pieces.append(
                block[max(start, window) - window : min(stop, window + len(block)) - window]
            )
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __call__(self, units: slice) -> np.ndarray:
        """Maps of a block of units over all images, float32 (N, len(units), h, w)."""
        return self.rows(units, 0, self.n_images)


class _InMemoryRows:
    """The rows interface over maps a plain read_maps callable returned (all images at once)."""

    def __init__(self, maps: np.ndarray, window: int = 256) -> None:
        self.maps = maps
        self.window = window
        self.n_images = len(maps)

    def rows(self, units: slice, start: int, stop: int) -> np.ndarray:
        """Rows start .. stop of the maps (the unit block is already selected)."""
        return self.maps[start:stop]


def store_reader(
    store: ActivationStore,
    layer: str,
    broden: Broden | None = None,
    rotation: np.ndarray | None = None,
    rows_per_read: int = 256,
) -> StoreMaps:
    """A read_maps callable over a store layer's maps; with broden, check rows and paths match.

    With a rotation R (C, C) it returns the rotated units' maps z_j = r_j . a (every channel is
    read, `rows_per_read` images at a time). `concept_iou` streams it `rows_per_read` images at a
    time, so memory does not grow with the number of concept images.
    """
    group = store.layer(layer)
    if "maps" not in group:
        raise ValueError(f"activation store {store.path} holds no maps for layer {layer!r}")
    maps = group["maps"]
    if broden is not None:
        if maps.shape[0] != len(broden.records):
            raise ValueError(
                f"activation store {store.path} has {maps.shape[0]} rows but the Broden set "
                f"{broden.root} has {len(broden.records)} records"
            )
        if "paths" in store.file:
            paths = [p.decode() if isinstance(p, bytes) else str(p) for p in store.file["paths"]]
            images = [record.image for record in broden.records]
            if paths != images:
                bad = next(k for k, (a, b) in enumerate(zip(paths, images, strict=True)) if a != b)
                raise ValueError(
                    f"activation store {store.path} row {bad} is {paths[bad]!r} but the Broden "
                    f"set {broden.root} record {bad} is {images[bad]!r}"
                )
    if rotation is not None and np.shape(rotation) != (maps.shape[1],) * 2:
        raise ValueError(f"rotation {np.shape(rotation)} does not fit {maps.shape[1]} channels")
    return StoreMaps(maps, rotation, rows_per_read)


#: Suffix of Broden's scene label names ("street-s"); a class matches its name without it.
SCENE_SUFFIX = "-s"


def concept_classes(
    labels: ConceptLabels, concepts: np.ndarray, classes: Sequence[str]
) -> list[str]:
    """The concept-implied class of each unit: the class whose images most often carry its concept.

    `concepts` holds result columns (one per unit; -1, no concept, gives ""). A class counts
    when the concept set has a label of the same name, or a scene label of that name plus "-s"
    (in the default world, and partly in Broden with Places365, scene labels are the classes;
    Broden writes them "<scene>-s"; an exact name wins); an image "carries" a label when any of
    its pixels (or the image, for image-level labels) has it. Ties go to the lower class index;
    no usable class gives "".
    """
    present = np.zeros((len(labels), len(labels.index.numbers)), dtype=bool)
    for row, item in enumerate(labels.images):
        present[row, item.columns] = True
    name_to_column = {name: k for k, name in enumerate(labels.index.names)}
    for k, (name, category) in enumerate(
        zip(labels.index.names, labels.index.categories, strict=True)
    ):  # Broden names scene labels "<scene>-s": "bakery-shop-s" is the class "bakery-shop"
        if category == "scene" and name.endswith(SCENE_SUFFIX):
            name_to_column.setdefault(name.removesuffix(SCENE_SUFFIX), k)
    class_columns = [(k, name_to_column.get(name, -1)) for k, name in enumerate(classes)]
    usable = [
        (k, column) for k, column in class_columns if column >= 0 and present[:, column].any()
    ]
    if not usable:
        return [""] * len(concepts)
    rate = np.stack(  # (L, n_usable) fraction of each class's images carrying each label
        [present[present[:, column]].mean(axis=0) for _, column in usable], axis=1
    )
    result = []
    for column in concepts:
        if column < 0:
            result.append("")
            continue
        rates = rate[column]
        result.append(classes[usable[int(np.argmax(rates))][0]] if rates.max() > 0 else "")
    return result


def _top_images(peak: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and spatial maxima (peak, (N, b)) of each unit's top_k images; ties to lower rows."""
    scores = peak.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1)


class _Source:
    """Rows of one unit block's maps: from a StoreMaps (streamed) or from maps in memory."""

    def __init__(self, rows: StoreMaps | _InMemoryRows, spatial: int) -> None:
        self.rows = rows.rows
        self.window = rows.window
        self.spatial = spatial


def _block_source(
    read_maps: Callable[[slice], np.ndarray], units: slice, n_images: int, root: str
) -> _Source:
    """How concept_iou reads one unit block: streamed from a store, else read whole once."""
    b = units.stop - units.start
    if isinstance(read_maps, StoreMaps):
        shape = (read_maps.n_images, b, *read_maps.maps.shape[2:])
        maps = None
    else:
        maps = np.ascontiguousarray(read_maps(units), dtype=np.float32)
        shape = maps.shape
    if len(shape) != 4 or shape[:2] != (n_images, b):
        raise ValueError(
            f"read_maps returned maps of shape {shape} for units {units.start}:"
            f"{units.stop}, but the Broden set {root} has {n_images} records "
            f"(expected ({n_images}, {b}, h, w))"
        )
    rows = read_maps if maps is None else _InMemoryRows(maps)
    return _Source(rows, int(shape[2] * shape[3]))


#: Relative margin of the exact skip: bilinear outputs are convex combinations of the map, so
#: they exceed its max by at most a few float32 rounding steps (~1e-7 relative).
_SKIP_MARGIN = 1e-6


@torch.no_grad()
def concept_iou(
    read_maps: Callable[[slice], np.ndarray],
    n_units: int,
    broden: Broden | ConceptLabels,
    quantile: float = 0.005,
    unit_block: int = 64,
    image_batch: int = 64,
    top_k: int = 10,
    progress: Callable[[int, int], None] | None = None,
    counting: str = "netdissect",
) -> ConceptResult:
    """Network Dissection IoU of every unit with every label of the concept set.

    `read_maps(units)` returns float32 maps (N, len(units), h, w) of all concept images in Broden
    record order; a `StoreMaps` (from `store_reader`) is instead streamed, one window of images
    at a time, twice per unit block (thresholds and maxima, then counts), so memory does not grow
    with N beyond per-image arrays. `broden` may be labels already decoded by concept_labels (to
    share them between layers); `progress(units_done, n_units)` is called after each unit block;
    `counting` is one of COUNTING (module docstring). Thresholds keep only each unit's top
    activations (`_StreamingQuantile`). (image, unit) pairs whose map max cannot reach T_u even
    after rounding are not upsampled (their mask is empty); the others are upsampled together,
    thresholded, and their mask pixels counted per label combination with one bincount per batch.
    """
    _check_quantile(quantile)
    check_counting(counting)
    if image_batch <= 0 or top_k < 0:
        raise ValueError(f"image_batch must be > 0 and top_k >= 0, got {image_batch}, {top_k}")
    labels = broden if isinstance(broden, ConceptLabels) else concept_labels(broden)
    index, n_images = labels.index, len(labels)
    if not n_images:
        raise ValueError(f"the Broden set {labels.root} has no images")
    n_cols, n_cats = len(index.numbers), len(index.category_names)
    batches = _batches(labels.images, image_batch)  # label structures built per batch below

    intersection = np.zeros((n_units, n_cols), dtype=np.int64)
    activation = np.zeros((n_units, n_cats), dtype=np.int64)
    thresholds = np.zeros(n_units, dtype=np.float64)
    k = min(top_k, n_images)
    top_images = np.zeros((n_units, k), dtype=np.int64)
    top_scores = np.zeros((n_units, k), dtype=np.float64)
    for units in _unit_slices(n_units, unit_block):
        b = units.stop - units.start
        source = _block_source(read_maps, units, n_images, labels.root)
        # Pass 1: thresholds and each image's spatial max, window by window.
        streaming = _StreamingQuantile(b, n_images * source.spatial, 1.0 - quantile)
        peak = np.zeros((n_images, b), dtype=np.float64)
        for start in range(0, n_images, source.window):
            maps = source.rows(units, start, min(n_images, start + source.window))
            streaming.add(np.ascontiguousarray(maps.transpose(1, 0, 2, 3).reshape(b, -1)))
            peak[start : start + len(maps)] = maps.reshape(len(maps), b, -1).max(axis=2)
        thresholds[units] = streaming.result()
        top_images[units], top_scores[units] = _top_images(peak, k)
        cut = torch.from_numpy(float32_below(thresholds[units]))
        reach = peak + np.abs(peak) * _SKIP_MARGIN > thresholds[None, units]
        # Pass 2: masks and counts, image batch by image batch.
        both = torch.zeros(n_cols, b, dtype=torch.float64)
        fired = torch.zeros(b, n_cats, dtype=torch.int64)
        for images in batches:
            image, unit = np.nonzero(reach[images.start : images.stop])
            if not len(image):
                continue
            batch = _batch(labels, images, counting)
            block = torch.from_numpy(
                np.ascontiguousarray(source.rows(units, images.start, images.stop))
            )
            image_t, unit_t = torch.from_numpy(image), torch.from_numpy(unit)
            up = upsample(block[image_t, unit_t][:, None], batch.size)
            mask = up.reshape(len(image), -1) > cut[unit_t][:, None]
            pair, pixel = mask.nonzero(as_tuple=True)
            if not len(pair):
                continue
            if not len(batch.columns):  # no labels: no category present, nothing to count
                continue
            counts = torch.bincount(pair, minlength=len(image))
            combo = _combo_ids(labels.images, batch)[image_t[pair], pixel]
            if counting == "lite":
                hit = _touched(batch, pair, combo, len(image))
            else:
                hit = batch.present[image_t]
            fired.index_add_(0, unit_t, hit * counts[:, None])
            per_combo = torch.bincount(
                combo * b + unit_t[pair], minlength=len(batch.combo_labels) * b
            )
            both[batch.columns] += batch.combo_labels.T @ per_combo.view(-1, b).to(torch.float64)
        intersection[units] = both.T.round().to(torch.int64).numpy()
        activation[units] = fired.numpy()
        if progress is not None:
            progress(units.stop, n_units)

    ground_truth = labels.ground_truth(counting)
    area = activation[:, index.category_index_of[index.numbers]] + ground_truth[None, :]
    iou = intersection / (area - intersection + EPSILON)
    return ConceptResult(
        iou=iou,
        label_numbers=index.numbers,
        label_names=index.names,
        label_categories=index.categories,
        categories=index.category_names,
        thresholds=thresholds,
        intersection=intersection,
        activation=activation,
        ground_truth=ground_truth,
        top_images=top_images,
        top_scores=top_scores,
        quantile=quantile,
        counting=counting,
    )
