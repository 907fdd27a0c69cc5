"""Concept IoU streams the store: exact thresholds from kept order statistics, same results."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unitablation.broden import Broden, read_broden
from unitablation.concepts import (
    StoreMaps,
    _StreamingQuantile,
    concept_iou,
    concept_labels,
    store_reader,
)
from unitablation.rotation import haar_rotation
from unitablation.store import ActivationStore
from unitablation.world import WorldSpec
from unitablation.world_export import write_concept_set

LEVELS = (0.0, 1e-3, 0.005, 0.1, 0.37, 0.5, 0.63, 0.9, 0.995, 0.999, 1.0)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 100, 1001, 70_000])
def test_streamed_quantile_is_numpy_quantile_bit_for_bit(count: int) -> None:
    rng = np.random.default_rng(count)
    values = np.stack(
        [
            rng.standard_normal(count).astype(np.float32),
            np.maximum(rng.standard_normal(count), 0).astype(np.float32),  # ReLU: many zeros
            np.round(rng.standard_normal(count) * 3).astype(np.float32),  # many ties
            np.full(count, 2.5, dtype=np.float32),
        ]
    )
    for level in LEVELS:
        expected = [np.quantile(row.astype(np.float64), level) for row in values]
        streaming = _StreamingQuantile(len(values), count, level)
        cuts = np.sort(rng.integers(0, count + 1, size=3))
        for piece in np.split(values, cuts, axis=1):
            streaming.add(np.ascontiguousarray(piece))
        result = streaming.result()
        assert result.dtype == np.float64
        assert np.array_equal(result, expected), (count, level)
        assert all(len(kept[0]) == streaming.keep <= count // 2 + 1 for kept in streaming.kept)


@pytest.mark.parametrize("images", [40, 400])
def test_peak_floor_drops_values_without_changing_the_quantile(images: int) -> None:
    # Values fed as images of 16 positions; the floor of each piece is the keep-th largest
    # per-image max of that piece (as concept_iou passes it). Ties at the floor (ReLU zeros,
    # rounded values) must survive, and the result must stay numpy's.
    from unitablation.concepts import _peak_floor

    rng = np.random.default_rng(images)
    maps = np.stack(
        [
            rng.standard_normal((images, 16)),
            np.maximum(rng.standard_normal((images, 16)) - 1.5, 0),  # mostly zeros
            np.round(rng.standard_normal((images, 16))),  # few distinct values
        ],
        axis=1,
    ).astype(np.float32)  # (images, units, positions)
    for level in (0.5, 0.9, 0.995, 0.999, 1.0):
        streaming = _StreamingQuantile(3, images * 16, level)
        dropped = 0
        for start in range(0, images, 70):
            piece = maps[start : start + 70]
            floor = _peak_floor(piece.max(axis=2), streaming.keep)
            values = np.ascontiguousarray(piece.transpose(1, 0, 2).reshape(3, -1))
            if floor is not None and streaming.from_top:
                dropped += int((values < floor[:, None]).sum())
            streaming.add(values, floor)
        expected = [np.quantile(maps[:, u].astype(np.float64), level) for u in range(3)]
        assert np.array_equal(streaming.result(), expected), level
        if level >= 0.995 and images == 400:
            assert dropped > 0  # the floor did drop values


def test_streamed_quantile_keeps_nan_and_checks_the_count() -> None:
    values = np.array([[1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    for level in (0.0, 0.5, 1.0):
        streaming = _StreamingQuantile(2, 4, level)
        streaming.add(values)
        expected = [np.quantile(row.astype(np.float64), level) for row in values]
        np.testing.assert_array_equal(streaming.result(), expected)
    short = _StreamingQuantile(2, 5, 0.5)
    short.add(values)
    with pytest.raises(RuntimeError, match="expected 5"):
        short.result()


def concept_set(root: Path, images: int) -> None:
    """A small world concept set (32 x 32 images, 16 x 16 segmentations)."""
    write_concept_set(root, WorldSpec(image_size=32, n_classes=4, concept_images=images))


def write_store(path: Path, maps: np.ndarray, paths: list[str]) -> None:
    """An activation store holding `maps` for layer 'conv' in small chunks."""
    with h5py.File(path, "w") as f:
        f.attrs["layers"] = '["conv"]'
        f.attrs["classes"] = "[]"
        f.create_dataset("labels", data=np.full(len(maps), -1, dtype=np.int64))
        f.create_dataset("logits", data=np.zeros((len(maps), 2), dtype=np.float32))
        f.create_dataset("paths", data=np.array(paths, dtype=h5py.string_dtype()))
        group = f.create_group("layers").create_group("conv")
        group.create_dataset("maps", data=maps, chunks=(4, *maps.shape[1:]))
        group.create_dataset("mean", data=maps.mean(axis=(2, 3)))
        group.create_dataset("max", data=maps.max(axis=(2, 3)))


class CountingMaps:
    """An h5py maps dataset stand-in that records how many images each read asks for."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset
        self.shape = dataset.shape
        self.rows_read: list[int] = []

    def __getitem__(self, key: object) -> np.ndarray:
        block = self.dataset[key]
        self.rows_read.append(len(block))
        return block


@pytest.mark.parametrize("seed", [None, 3])
def test_store_streaming_equals_in_memory_and_reads_bounded_windows(
    tmp_path: Path, seed: int | None
) -> None:
    concept_set(tmp_path / "broden", 37)
    broden = read_broden(tmp_path / "broden")
    labels = concept_labels(broden)
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.standard_normal((37, 6, 4, 4)), 0).astype(np.float32)
    write_store(tmp_path / "concept.h5", maps, [record.image for record in broden.records])
    rotation = None if seed is None else haar_rotation(6, seed)
    settings = {"quantile": 0.05, "unit_block": 4, "image_batch": 8, "top_k": 5}
    with ActivationStore(tmp_path / "concept.h5") as store:
        whole = store_reader(store, "conv", broden, rotation, rows_per_read=1000)
        in_memory = whole(slice(0, 6))  # all maps at once, read by plain slicing below
        reference = concept_iou(lambda units: in_memory[:, units], 6, labels, **settings)
        for rows_per_read in (5, 16, 37):
            read = store_reader(store, "conv", broden, rotation, rows_per_read=rows_per_read)
            assert isinstance(read, StoreMaps)
            read.maps = CountingMaps(read.maps)
            streamed = concept_iou(read, 6, labels, **settings)
            assert max(read.maps.rows_read) <= rows_per_read  # never the whole store
            for name in ("iou", "thresholds", "intersection", "activation", "top_images"):
                np.testing.assert_array_equal(getattr(streamed, name), getattr(reference, name))
            np.testing.assert_array_equal(streamed.top_scores, reference.top_scores)
    assert reference.intersection.any()


def test_store_maps_rows_span_windows(tmp_path: Path) -> None:
    maps = np.arange(11 * 3 * 2 * 2, dtype=np.float32).reshape(11, 3, 2, 2)
    write_store(tmp_path / "s.h5", maps, [f"{k}.png" for k in range(11)])
    with ActivationStore(tmp_path / "s.h5") as store:
        read = store_reader(store, "conv", rows_per_read=4)
        np.testing.assert_array_equal(read.rows(slice(1, 3), 2, 9), maps[2:9, 1:3])
        np.testing.assert_array_equal(read.rows(slice(0, 3), 8, 11), maps[8:11])
        np.testing.assert_array_equal(read(slice(2, 3)), maps[:, 2:3])
        with pytest.raises(ValueError, match="rows_per_read must be > 0"):
            store_reader(store, "conv", rows_per_read=0)


def full_loop_iou(maps: np.ndarray, broden: Broden, quantile: float) -> np.ndarray:
    """IoU ("netdissect" counting) by hand per image and unit, every map upsampled (no skip)."""
    numbers = sorted(n for n, c in broden.category_of_label.items() if c in broden.categories)
    thresholds = [
        np.quantile(maps[:, u].astype(np.float64), 1 - quantile) for u in range(len(maps[0]))
    ]
    both = np.zeros((maps.shape[1], len(numbers)), np.int64)
    fired = np.zeros((maps.shape[1], len(broden.categories)), np.int64)
    truth = np.zeros(len(numbers), np.int64)
    for i, record in enumerate(broden.records):
        layers = np.concatenate(
            [s for c, s in broden.load_labels(i).items() if c in broden.categories]
        )
        truth += [(layers == n).sum() for n in numbers]
        present = {
            broden.categories.index(broden.category_of_label[n])
            for n in numbers
            if (layers == n).any()
        }
        for u in range(maps.shape[1]):
            up = F.interpolate(
                torch.from_numpy(maps[i, u])[None, None],
                size=(record.sh, record.sw),
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            mask = up > thresholds[u]
            both[u] += [(mask & (layers == n)).sum() for n in numbers]
            fired[u, sorted(present)] += mask.sum()
    columns = [broden.categories.index(broden.category_of_label[n]) for n in numbers]
    return both / (fired[:, columns] + truth[None, :] - both + 1e-10)


def test_skipped_pairs_change_nothing(tmp_path: Path) -> None:
    concept_set(tmp_path / "broden", 23)
    broden = read_broden(tmp_path / "broden")
    rng = np.random.default_rng(5)
    maps = np.round(np.maximum(rng.standard_normal((23, 5, 4, 4)), 0) * 2).astype(np.float32)
    maps[:, 3] = 0.0  # dead unit: T = 0, every map is skipped
    maps[::2, 4] = 0.25  # flat maps: on these images the max is below T of unit 4
    quantile = 0.1
    thresholds = np.quantile(
        maps.transpose(1, 0, 2, 3).reshape(5, -1).astype(np.float64), 1 - quantile, axis=1
    )
    peak = maps.max(axis=(2, 3))
    skipped = peak <= thresholds[None, :]
    assert skipped[:, :3].any() and (~skipped[:, :3]).any()  # both kinds on live units
    assert (peak == thresholds[None, :]).any()  # a map whose max equals T: skipped, empty mask
    expected = full_loop_iou(maps, broden, quantile)
    for image_batch in (1, 4, 100):
        result = concept_iou(
            lambda units: maps[:, units],
            5,
            broden,
            quantile=quantile,
            unit_block=2,
            image_batch=image_batch,
        )
        assert np.array_equal(result.iou, expected), image_batch
    assert result.intersection[:3].any()


def test_labels_are_decoded_one_bounded_batch_at_a_time(tmp_path: Path) -> None:
    concept_set(tmp_path / "broden", 13)
    broden = read_broden(tmp_path / "broden")
    labels = concept_labels(broden)
    assert {f.name for f in fields(labels)} == {"broden", "index"}  # nothing per image kept
    batches = list(labels.batches(image_batch=4))
    assert [len(b.images) for b in batches] == [4, 4, 4, 1]
    assert all(b.layers.shape[0] == len(b.images) for b in batches)
    carried = labels.carried()
    maps = np.random.default_rng(2).random((13, 2, 4, 4)).astype(np.float32)
    counted = concept_iou(lambda units: maps[:, units], 2, broden, image_batch=4).carried
    for i in range(13):
        layers = np.concatenate(list(broden.load_labels(i).values()))
        expected = [bool((layers == n).any()) for n in labels.index.numbers]
        assert carried[i].tolist() == expected
        assert counted[i].tolist() == expected  # what concept_iou's own pass over labels saw
    truth = [
        sum(
            int((np.concatenate(list(broden.load_labels(i).values())) == n).sum())
            for i in range(13)
        )
        for n in labels.index.numbers
    ]
    assert labels.ground_truth("netdissect").tolist() == truth
