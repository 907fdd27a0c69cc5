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
time in two streaming passes over the images. Pass 1 keeps, per unit, only the activations the
exact quantile can need (its top `quantile` fraction, or the bottom side when that is smaller)
and each image's spatial max. Pass 2 goes over windows of images: it decodes the window's labels
(each pixel's layers as result columns, image batch by image batch, nothing per pixel kept after
the window) and counts every unit block on them. An (image, unit) pair whose map max cannot
reach T_u even after rounding has an empty mask and adds nothing (NetDissect-Lite's shortcut), so
it is not upsampled; the other pairs are upsampled together, thresholded, and their mask pixels'
labels counted with one bincount. From a store (`store_reader`) no pass holds more than
`rows_per_read` images of maps or labels, so memory grows with the concept set only by the
O(N x units) per-image maxima and the kept top activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
    carried: np.ndarray | None = None  # (N, L) bool: image i holds label column c (pass 2's)

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


@dataclass(frozen=True)
class _LabelBatch:
    """One image batch's labels, decoded from the label files: each pixel's layers of labels."""

    images: range
    size: tuple[int, int]  # (sh, sw) shared by the batch's images
    layers: np.ndarray  # (B, n_layers, sh * sw) int32 result column + 1 per layer (0: none)
    present: np.ndarray  # (B, n_categories) bool, an occurrence of a label of the category
    held: np.ndarray  # (B, n_cols) bool, an occurrence of the label column

    def counted(self, counting: str) -> np.ndarray:
        """The layers as a counting rule counts them: "union" keeps a label once per pixel."""
        if counting != "union":
            return self.layers
        layers = self.layers.copy()
        for k in range(1, layers.shape[1]):
            repeated = (layers[:, :k] == layers[:, k : k + 1]).any(axis=1)
            layers[:, k][repeated] = 0
        return layers

    def ground_truth(self, counting: str, n_cols: int) -> np.ndarray:
        """(n_cols,) int64 G_c of the batch: counted occurrences over all pixels."""
        return np.bincount(self.counted(counting).ravel(), minlength=n_cols + 1)[1:]


def _image_numbers(broden: Broden, i: int, index: _LabelIndex) -> np.ndarray:
    """(n_layers, sh * sw) int32 label numbers of every layer of image i's listed categories."""
    record = broden.records[i]
    size = (record.sh, record.sw)
    stacks = []
    for category, stack in broden.load_labels(i).items():
        if category not in index.category_names:
            continue
        if stack.shape[1:] != size:
            raise ValueError(
                f"{broden.root}: image {record.image}: {category} labels have size "
                f"{stack.shape[1:]}, index.csv says {size}"
            )
        stacks.append(stack.reshape(stack.shape[0], -1))
    if not stacks:
        return np.zeros((0, size[0] * size[1]), dtype=np.int32)
    return np.concatenate(stacks) if len(stacks) > 1 else stacks[0]


def _decode(broden: Broden, index: _LabelIndex, images: range) -> _LabelBatch:
    """Decode the labels of a run of images of one segmentation size into one batch."""
    record = broden.records[images.start]
    per_image = [_image_numbers(broden, i, index) for i in images]
    numbers = np.zeros(
        (len(per_image), max(len(p) for p in per_image), record.sh * record.sw), dtype=np.int32
    )
    for row, item in enumerate(per_image):
        numbers[row, : len(item)] = item
    lookup = np.append(index.column_of + 1, 0).astype(np.int32)  # beyond label.csv: 0
    layers = lookup[np.minimum(numbers, len(lookup) - 1)]
    n_cols = len(index.numbers)
    offsets = np.arange(len(per_image), dtype=np.int64)[:, None, None] * (n_cols + 1)
    held = np.bincount((layers + offsets).ravel(), minlength=len(per_image) * (n_cols + 1))
    held = held.reshape(len(per_image), n_cols + 1)[:, 1:] > 0  # (B, n_cols)
    membership = np.zeros((n_cols, len(index.category_names)), dtype=bool)
    membership[np.arange(n_cols), index.category_index_of[index.numbers]] = True
    present = (held.astype(np.int64) @ membership) > 0
    return _LabelBatch(images, (record.sh, record.sw), layers, present, held)


def _batches(broden: Broden, start: int, stop: int, image_batch: int) -> list[range]:
    """Consecutive image ranges of at most image_batch images sharing one segmentation size."""
    sizes = [(r.sh, r.sw) for r in broden.records[start:stop]]
    result: list[range] = []
    first = 0
    for i in range(1, len(sizes) + 1):
        if i == len(sizes) or i - first == image_batch or sizes[i] != sizes[first]:
            result.append(range(start + first, start + i))
            first = i
    return result


@dataclass(frozen=True)
class ConceptLabels:
    """A Broden set's result columns; its labels are decoded one image batch at a time.

    Nothing per pixel is kept: `batches` reads and decodes the label files each time it runs,
    so memory stays that of one batch whatever the size of the concept set.
    """

    broden: Broden
    index: _LabelIndex

    @property
    def root(self) -> str:
        """The Broden directory."""
        return str(self.broden.root)

    def __len__(self) -> int:
        """Number of concept images."""
        return len(self.broden.records)

    def batches(
        self, image_batch: int = 64, start: int = 0, stop: int | None = None
    ) -> Iterator[_LabelBatch]:
        """Decoded labels of images start .. stop, at most image_batch images (one size) each."""
        stop = len(self) if stop is None else stop
        for images in _batches(self.broden, start, stop, image_batch):
            yield _decode(self.broden, self.index, images)

    def ground_truth(self, counting: str = "netdissect") -> np.ndarray:
        """(L,) int64 G_c under a counting rule: occurrences over all pixels of all images."""
        check_counting(counting)
        n_cols = len(self.index.numbers)
        result = np.zeros(n_cols, dtype=np.int64)
        for batch in self.batches():
            result += batch.ground_truth(counting, n_cols)
        return result

    def carried(self) -> np.ndarray:
        """(N, L) bool: image i holds an occurrence of label column c (any pixel or image-level)."""
        n_cols = len(self.index.numbers)
        result = np.zeros((len(self), n_cols), dtype=bool)
        for batch in self.batches():
            result[batch.images.start : batch.images.stop] = batch.held
        return result


def concept_labels(broden: Broden) -> ConceptLabels:
    """The result columns of a Broden set, its labels read later one batch at a time."""
    return ConceptLabels(broden, _label_index(broden))


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

    def add(self, values: np.ndarray, floor: np.ndarray | None = None) -> None:
        """Feed (b, m) float32 values (m more values of every unit).

        `floor` (b,) is a value per unit that at least `keep` of the values of this call reach
        (e.g. the keep-th largest of their per-image maxima); values below it can never be among
        the top `keep`, so they are dropped at once. Only used when keeping the top.
        """
        self.seen += values.shape[1]
        self.nan |= np.isnan(values).any(axis=1)
        needed = None
        if self.bounded.any():
            bound = self.bound[:, None]
            needed = values > bound if self.from_top else values < bound
            needed |= ~self.bounded[:, None]
        if floor is not None and self.from_top:
            floor = np.where(np.isfinite(floor), floor, -np.inf).astype(np.float32)[:, None]
            needed = values >= floor if needed is None else needed & (values >= floor)
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


def _peak_floor(peak: np.ndarray, keep: int) -> np.ndarray | None:
    """Per unit, the keep-th largest spatial max of a window's images (peak (n, b)), or None.

    Each image's max is one of the unit's values, so at least `keep` values reach it: a value
    below it is never among the top `keep` (`_StreamingQuantile.add`'s floor). Once a unit holds
    its top `keep`, their innermost value bounds it at least as tightly, so later windows need
    no floor.
    """
    if keep <= 0 or len(peak) < keep:
        return None
    return np.partition(peak, len(peak) - keep, axis=0)[len(peak) - keep]


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
    labels: ConceptLabels,
    concepts: np.ndarray,
    classes: Sequence[str],
    carried: np.ndarray | None = None,
) -> list[str]:
    """The concept-implied class of each unit: the class whose images most often carry its concept.

    `concepts` holds result columns (one per unit; -1, no concept, gives ""). A class counts
    when the concept set has a label of the same name, or a scene label of that name plus "-s"
    (in the default world, and partly in Broden with Places365, scene labels are the classes;
    Broden writes them "<scene>-s"; an exact name wins); an image "carries" a label when any of
    its pixels (or the image, for image-level labels) has it. Ties go to the lower class index;
    no usable class gives "". `carried` is `labels.carried()` when a pass over the labels
    (`ConceptResult.carried`) already made it, so the label files are not decoded again.
    """
    present = labels.carried() if carried is None else carried
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
#: (image, unit) pairs upsampled at once: small enough for their upsampled maps to stay in cache.
_PAIR_CHUNK = 1024


@dataclass
class _Tally:
    """One unit block's running counts: I per (unit, column + 1) and A per (unit, category)."""

    both: torch.Tensor  # (b, n_cols + 1) int64, column 0 collects unlabelled layers
    fired: torch.Tensor  # (b, n_categories) int64


def _count_batch(
    tally: _Tally,
    maps: torch.Tensor,
    image: torch.Tensor,
    unit: torch.Tensor,
    cut: torch.Tensor,
    layers: torch.Tensor,
    present: torch.Tensor,
    category_of: torch.Tensor | None,
    size: tuple[int, int],
) -> None:
    """Add the masks of the (image, unit) pairs of one batch to the tally, a chunk at a time.

    `maps` (B, b, h, w) float32, `layers` (B * sh * sw, n_layers) int64 counted column + 1 per
    pixel, `present` (B, n_categories) int64; `category_of` (n_cols + 1,) maps a column + 1 to
    its category (-1 for 0) under "lite", None otherwise.
    """
    pixels = size[0] * size[1]
    b, n_labels = tally.both.shape
    for start in range(0, len(image), _PAIR_CHUNK):
        image_c, unit_c = image[start : start + _PAIR_CHUNK], unit[start : start + _PAIR_CHUNK]
        up = upsample(maps[image_c, unit_c][:, None], size).reshape(len(image_c), pixels)
        pair, pixel = (up > cut[unit_c][:, None]).nonzero(as_tuple=True)
        if not len(pair):
            continue
        values = layers[image_c[pair] * pixels + pixel]  # (mask pixels, n_layers)
        if category_of is None:
            hit = present[image_c]
        else:  # "lite": the categories whose labels the mask covers
            categories = category_of[values]
            n_cats = tally.fired.shape[1]
            keys = (pair[:, None] * n_cats + categories)[categories >= 0].unique()
            hit = torch.zeros(len(image_c) * n_cats, dtype=torch.int64)
            hit[keys] = 1
            hit = hit.view(len(image_c), n_cats)
        tally.fired.index_add_(
            0, unit_c, hit * torch.bincount(pair, minlength=len(image_c))[:, None]
        )
        keys = unit_c[pair][:, None] * n_labels + values
        tally.both += torch.bincount(keys.view(-1), minlength=b * n_labels).view(b, n_labels)


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
    record order (each unit block is read once and kept); a `StoreMaps` (from `store_reader`) is
    instead streamed, one window of images at a time. Pass 1, per unit block: thresholds (only
    each unit's top activations are kept, `_StreamingQuantile`) and each image's spatial max.
    Pass 2, per window of images: the window's labels are decoded (image batch by image batch),
    then for every unit block the (image, unit) pairs whose map max can reach T_u (after
    rounding) are upsampled, thresholded and their mask pixels' labels counted with one bincount;
    the others have empty masks and add nothing. `progress(units_done, n_units)` is called after
    each unit block of pass 1 and `counting` is one of COUNTING (module docstring).
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

    thresholds = np.zeros(n_units, dtype=np.float64)
    peak = np.zeros((n_images, n_units), dtype=np.float32)  # exact: the maps are float32
    k = min(top_k, n_images)
    top_images = np.zeros((n_units, k), dtype=np.int64)
    top_scores = np.zeros((n_units, k), dtype=np.float64)
    blocks = _unit_slices(n_units, unit_block)
    sources = []
    for units in blocks:  # pass 1: thresholds and each image's spatial max, window by window
        b = units.stop - units.start
        source = _block_source(read_maps, units, n_images, labels.root)
        streaming = _StreamingQuantile(b, n_images * source.spatial, 1.0 - quantile)
        for start in range(0, n_images, source.window):
            maps = source.rows(units, start, min(n_images, start + source.window))
            peak[start : start + len(maps), units] = maps.reshape(len(maps), b, -1).max(axis=2)
            floor = None
            if not streaming.bounded.all():
                floor = _peak_floor(peak[start : start + len(maps), units], streaming.keep)
            streaming.add(np.ascontiguousarray(maps.transpose(1, 0, 2, 3).reshape(b, -1)), floor)
        thresholds[units] = streaming.result()
        top_images[units], top_scores[units] = _top_images(peak[:, units].astype(np.float64), k)
        sources.append(source)
        if progress is not None:
            progress(units.stop, n_units)
    reach = peak + np.abs(peak) * _SKIP_MARGIN > thresholds[None, :]
    cut = torch.from_numpy(float32_below(thresholds))

    ground_truth = np.zeros(n_cols, dtype=np.int64)
    carried = np.zeros((n_images, n_cols), dtype=bool)
    tallies = [
        _Tally(
            torch.zeros(s.stop - s.start, n_cols + 1, dtype=torch.int64),
            torch.zeros(s.stop - s.start, n_cats, dtype=torch.int64),
        )
        for s in blocks
    ]
    category_of = torch.from_numpy(np.concatenate([[-1], index.category_index_of[index.numbers]]))
    window = sources[0].window if sources else n_images
    for first in range(0, n_images, window):  # pass 2: labels decoded once per window
        decoded = []
        for batch in labels.batches(image_batch, first, min(n_images, first + window)):
            counted = batch.counted(counting)
            carried[batch.images.start : batch.images.stop] = batch.held
            ground_truth += np.bincount(counted.ravel(), minlength=n_cols + 1)[1:]
            if not counted.any():  # no labels: no category present, nothing to count
                continue
            flat = np.ascontiguousarray(counted.transpose(0, 2, 1)).reshape(-1, counted.shape[1])
            decoded.append((batch, torch.from_numpy(flat.astype(np.int64))))
        for units, source, tally in zip(blocks, sources, tallies, strict=True):
            for batch, layers in decoded:
                images = batch.images
                image, unit = np.nonzero(reach[images.start : images.stop, units])
                if not len(image):
                    continue
                maps = torch.from_numpy(
                    np.ascontiguousarray(source.rows(units, images.start, images.stop))
                )
                _count_batch(
                    tally,
                    maps,
                    torch.from_numpy(image),
                    torch.from_numpy(unit),
                    cut[units],
                    layers,
                    torch.from_numpy(batch.present.astype(np.int64)),
                    category_of if counting == "lite" else None,
                    batch.size,
                )

    intersection = np.zeros((n_units, n_cols), dtype=np.int64)
    activation = np.zeros((n_units, n_cats), dtype=np.int64)
    for units, tally in zip(blocks, tallies, strict=True):
        intersection[units] = tally.both[:, 1:].numpy()
        activation[units] = tally.fired.numpy()
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
        carried=carried,
    )
