"""Tests of Network Dissection concept IoU: hand-worked cases and an independent per-map loop."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unitablation.broden import Broden, BrodenWriter, LabelDef, read_broden
from unitablation.concepts import (
    ConceptResult,
    concept_iou,
    concept_labels,
    store_reader,
    unit_thresholds,
)
from unitablation.store import ActivationStore
from unitablation.tables import with_detectors

LABELS = [
    LabelDef(1, "red", "color"),
    LabelDef(2, "blue", "color"),
    LabelDef(3, "box", "object"),
    LabelDef(4, "ball", "object"),
    LabelDef(5, "lid", "part"),
    LabelDef(6, "handle", "part"),
    LabelDef(7, "kitchen", "scene"),
    LabelDef(8, "street", "scene"),
    LabelDef(9, "dotted", "texture"),
]
NUMBER = {lab.name: lab.number for lab in LABELS}

Image = tuple[Mapping[str, Sequence[np.ndarray]], Mapping[str, Sequence[int]]]


def write_set(root: Path, images: Sequence[Image]) -> Broden:
    """Write a tiny Broden set (pixel layers, image-level labels per image) and read it back."""
    writer = BrodenWriter(root, LABELS)
    for k, (pixel, image_level) in enumerate(images):
        sh, sw = next(iter(pixel.values()))[0].shape if pixel else (4, 4)
        picture = np.zeros((2 * sh, 2 * sw, 3), dtype=np.uint8)
        writer.add(f"{k:03d}", picture, pixel, image_level)
    writer.close()
    return read_broden(root)


def reader(maps: np.ndarray) -> Callable[[slice], np.ndarray]:
    """read_maps over in-memory (N, U, h, w) maps."""
    maps = np.asarray(maps, dtype=np.float32)
    return lambda units: maps[:, units]


def column(result: ConceptResult, name: str) -> int:
    """Result column of a label name."""
    return result.label_names.index(name)


def layer(cells: dict[tuple[int, int], int], size: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A label layer with the given (row, col) -> label number pixels."""
    ids = np.zeros(size, dtype=np.int32)
    for (r, c), number in cells.items():
        ids[r, c] = number
    return ids


def naive_iou(maps: np.ndarray, broden: Broden, quantile: float) -> dict[str, np.ndarray]:
    """Straightforward per-image, per-unit loop (upsample, threshold, count), "union" counting.

    In these sets every label lies only in its own category's layers and every non-empty
    category cell holds one of its labels, so "category present" is "cell non-empty" here.
    """
    maps = np.asarray(maps, dtype=np.float32)
    n_images, n_units = maps.shape[:2]
    numbers = sorted(n for n, cat in broden.category_of_label.items() if cat in broden.categories)
    cats = broden.categories
    thresholds = np.array(
        [np.quantile(maps[:, u].astype(np.float64), 1 - quantile) for u in range(n_units)]
    )
    inter = np.zeros((n_units, len(numbers)), dtype=np.int64)
    act = np.zeros((n_units, len(cats)), dtype=np.int64)
    truth = np.zeros(len(numbers), dtype=np.int64)
    for i in range(n_images):
        record = broden.records[i]
        labels = broden.load_labels(i)
        for k, number in enumerate(numbers):
            stack = labels.get(broden.category_of_label[number])
            if stack is not None:
                truth[k] += int((stack == number).any(axis=0).sum())
        for u in range(n_units):
            up = F.interpolate(
                torch.from_numpy(maps[i, u]).view(1, 1, *maps.shape[2:]),
                size=(record.sh, record.sw),
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            mask = up > thresholds[u]
            for c, category in enumerate(cats):
                if category in labels:
                    act[u, c] += int(mask.sum())
            for k, number in enumerate(numbers):
                stack = labels.get(broden.category_of_label[number])
                if stack is not None:
                    inter[u, k] += int((mask & (stack == number).any(axis=0)).sum())
    area = act[:, [cats.index(broden.category_of_label[n]) for n in numbers]] + truth
    return {
        "iou": inter / (area - inter + 1e-10),
        "intersection": inter,
        "activation": act,
        "ground_truth": truth,
        "thresholds": thresholds,
    }


def test_unit_equal_to_a_label_mask_has_iou_one(tmp_path: Path) -> None:
    box0 = layer({(0, 0): 3, (0, 1): 3, (1, 0): 3})
    box1 = layer({(3, 3): 3, (2, 3): 4})
    broden = write_set(tmp_path / "b", [({"object": [box0]}, {}), ({"object": [box1]}, {})])
    maps = np.stack([(box0 == 3), (box1 == 3)]).astype(np.float32)[:, None]  # (2, 1, 4, 4)
    same = torch.rand(2, 3, 4, 4)
    interpolated = F.interpolate(same, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.equal(interpolated, same)  # upsampling to the same size is the identity
    result = concept_iou(reader(maps), 1, broden, quantile=0.5)
    assert result.thresholds[0] == 0.0  # 4 ones among 32 values
    assert result.iou[0, column(result, "box")] == pytest.approx(1.0, abs=1e-9)
    assert result.iou[0, column(result, "ball")] == 0.0
    assert result.intersection[0, column(result, "box")] == 4
    assert result.ground_truth[column(result, "ball")] == 1
    row = result.table().iloc[0]
    assert (row["concept"], row["concept_category"], row["is_detector"]) == ("box", "object", True)


def test_image_level_labels_count_every_pixel(tmp_path: Path) -> None:
    red = layer({(0, 0): 1})
    broden = write_set(
        tmp_path / "b",
        [
            ({"color": [red]}, {"scene": [NUMBER["kitchen"]], "texture": [NUMBER["dotted"]]}),
            ({"color": [red]}, {"scene": [NUMBER["street"]]}),
        ],
    )
    maps = np.stack([np.ones((4, 4)), np.zeros((4, 4))]).astype(np.float32)[:, None]
    result = concept_iou(reader(maps), 1, broden, quantile=0.5)
    assert result.thresholds[0] == 0.5  # halfway between the 16 zeros and 16 ones
    assert result.ground_truth[column(result, "kitchen")] == 16
    assert result.ground_truth[column(result, "street")] == 16
    assert result.iou[0, column(result, "kitchen")] == pytest.approx(1.0, abs=1e-9)
    assert result.iou[0, column(result, "street")] == 0.0
    # texture is present in image 0 only: A = 16, G = 16, I = 16.
    assert result.iou[0, column(result, "dotted")] == pytest.approx(1.0, abs=1e-9)
    # red: I = 1, G = 2, A = 16 (color present in both images) -> 1 / 17.
    assert result.iou[0, column(result, "red")] == pytest.approx(1 / 17)
    table = result.table()
    assert table.loc[0, "concept_scene"] == "kitchen"
    assert table.loc[0, "iou_color"] == pytest.approx(1 / 17)


def test_label_in_a_second_part_layer_counts(tmp_path: Path) -> None:
    first = layer({(0, 0): 5, (0, 1): 5, (3, 3): 6})
    second = layer({(0, 1): 5, (1, 1): 5, (2, 2): 6})  # (0, 1) is lid in both layers
    broden = write_set(tmp_path / "b", [({"part": [first, second]}, {})])
    lid = (first == 5) | (second == 5)  # 3 pixels
    maps = np.zeros((1, 2, 4, 4), dtype=np.float32)
    maps[0, 0] = second == 5  # fires on layer 2's lid pixels only: (0, 1), (1, 1)
    maps[0, 1] = (first == 6) | (second == 6)
    result = concept_iou(reader(maps), 2, broden, quantile=0.5, counting="union")
    lid_col, handle_col = column(result, "lid"), column(result, "handle")
    assert result.ground_truth[lid_col] == lid.sum() == 3
    assert result.intersection[0, lid_col] == 2
    assert result.iou[0, lid_col] == pytest.approx(2 / 3)  # I 2, A 2, G 3
    assert result.iou[1, handle_col] == pytest.approx(1.0, abs=1e-9)
    assert result.table().loc[1, "concept"] == "handle"
    # NetDissect counts each layer: (0, 1) holds lid twice, so G 4 and I 3 (A stays 2)
    counted = concept_iou(reader(maps), 2, broden, quantile=0.5)
    assert counted.counting == "netdissect"
    assert counted.ground_truth[lid_col] == 4 and counted.intersection[0, lid_col] == 3
    assert counted.activation[0, counted.categories.index("part")] == 2
    assert counted.iou[0, lid_col] == pytest.approx(3 / (2 + 4 - 3))


def test_activation_counts_only_images_where_the_category_is_present(tmp_path: Path) -> None:
    box = layer({(0, 0): 3, (0, 1): 3, (1, 0): 3, (1, 1): 3})
    blue = layer({(3, 3): 2})
    broden = write_set(tmp_path / "b", [({"object": [box]}, {}), ({"color": [blue]}, {})])
    maps = np.zeros((2, 1, 4, 4), dtype=np.float32)
    maps[0, 0] = box == 3
    maps[1, 0, 2:, 2:] = 1.0  # 4 pixels in an image without object labels
    result = concept_iou(reader(maps), 1, broden, quantile=0.5)
    objects, colors = result.categories.index("object"), result.categories.index("color")
    assert result.activation[0, objects] == 4 and result.activation[0, colors] == 4
    # I = 4, G = 4, A = 4 (image 1 left out) -> 1; over all images A = 8 would give 0.5.
    assert result.iou[0, column(result, "box")] == pytest.approx(1.0, abs=1e-9)
    # blue: I = 1, G = 1, A = 4 (only image 1 has colours) -> 1 / 4.
    assert result.iou[0, column(result, "blue")] == pytest.approx(0.25)


def test_dead_unit_has_zero_threshold_and_iou(tmp_path: Path) -> None:
    box = layer({(0, 0): 3})
    broden = write_set(tmp_path / "b", [({"object": [box]}, {"scene": [7]})] * 2)
    maps = np.zeros((2, 2, 2, 2), dtype=np.float32)
    maps[:, 1] = np.arange(4, dtype=np.float32).reshape(2, 2)
    result = concept_iou(reader(maps), 2, broden)
    assert result.thresholds[0] == 0.0
    assert not result.iou[0].any() and not result.intersection[0].any()
    assert not result.activation[0].any()
    row = result.table().iloc[0]
    assert row["iou"] == 0.0 and not row["is_detector"]


def test_threshold_is_numpy_quantile_of_all_positions() -> None:
    values = np.arange(100, dtype=np.float32).reshape(4, 1, 5, 5)[:, :, ::-1]
    maps = np.concatenate([values, values * 0.5 - 3.0], axis=1)
    thresholds = unit_thresholds(reader(maps), 2, quantile=0.1, unit_block=1)
    assert thresholds[0] == pytest.approx(89.1)  # (100 - 1) * 0.9 = 89.1 -> 89 + 0.1 * (90 - 89)
    for u in range(2):
        assert thresholds[u] == np.quantile(maps[:, u].astype(np.float64), 0.9)
    for q in (0.005, 0.37, 0.0, 1.0):
        expected = [np.quantile(maps[:, u].astype(np.float64), 1 - q) for u in range(2)]
        assert np.array_equal(unit_thresholds(reader(maps), 2, quantile=q), expected)


def random_set(root: Path, rng: np.random.Generator, count: int) -> Broden:
    """Random labels: colours, 1-2 object layers, 0-2 part layers, scene; two seg sizes."""
    images: list[Image] = []
    for k in range(count):
        size = (12, 12) if k % 5 else (10, 14)
        pixel: dict[str, list[np.ndarray]] = {}
        if k % 4:
            pixel["color"] = [rng.choice([0, 1, 2], size=size, p=[0.5, 0.3, 0.2])]
        pixel["object"] = [rng.choice([0, 3, 4], size=size) for _ in range(1 + k % 2)]
        pixel["part"] = [rng.choice([0, 5, 6], size=size, p=[0.8, 0.1, 0.1]) for _ in range(k % 3)]
        scene = {"scene": [7 + k % 2]} if k % 3 else {}
        images.append((pixel, scene | ({"texture": [9]} if k % 2 else {})))
    return write_set(root, images)


def test_bilinear_upsampling_matches_a_per_map_loop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    broden = random_set(tmp_path / "b", rng, 23)
    maps = np.maximum(rng.standard_normal((23, 7, 3, 4)), 0).astype(np.float32)
    maps[:, 2] = 0.0  # a dead unit
    maps[5, 3] = 50.0  # a flat map above every other value
    expected = naive_iou(maps, broden, quantile=0.05)
    result = concept_iou(
        reader(maps), 7, broden, quantile=0.05, unit_block=3, image_batch=4, counting="union"
    )
    assert np.array_equal(result.thresholds, expected["thresholds"])
    assert np.array_equal(result.intersection, expected["intersection"])
    assert np.array_equal(result.activation, expected["activation"])
    assert np.array_equal(result.ground_truth, expected["ground_truth"])
    assert np.array_equal(result.iou, expected["iou"])
    assert result.intersection.sum() > 0 and result.iou.max() < 1.0
    assert list(result.label_numbers) == list(range(1, 10))


def test_shared_labels_blocks_progress_and_top_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    broden = random_set(tmp_path / "b", rng, 12)
    maps = rng.random((12, 5, 6, 6)).astype(np.float32)
    maps[[3, 7], 1] = 2.0  # tie at the top of unit 1
    calls: list[tuple[int, int]] = []
    a = concept_iou(reader(maps), 5, broden, unit_block=2, image_batch=5, top_k=3)
    b = concept_iou(
        reader(maps),
        5,
        concept_labels(broden),
        unit_block=64,
        image_batch=64,
        top_k=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert np.array_equal(a.iou, b.iou) and np.array_equal(a.top_images, b.top_images)
    assert calls == [(5, 5)]
    assert list(a.top_images[1, :2]) == [3, 7]
    peaks = maps.max(axis=(2, 3))
    for u in range(5):
        assert np.array_equal(a.top_scores[u], peaks[a.top_images[u], u])
        assert np.array_equal(a.top_scores[u], np.sort(peaks[:, u])[::-1][:3])
    assert concept_iou(reader(maps), 5, broden, top_k=50).top_images.shape == (5, 12)
    table = a.table(iou_threshold=0.0)
    assert list(table.columns[:6]) == [
        "unit",
        "iou",
        "concept",
        "concept_category",
        "is_detector",
        "threshold",
    ]
    for category in ("color", "object", "part", "scene", "texture"):
        assert f"iou_{category}" in table and f"concept_{category}" in table
    assert table["is_detector"].all()


def test_detector_flag_is_decided_apart_from_the_iou(tmp_path: Path) -> None:
    box = layer({(0, 0): 3, (0, 1): 3})
    broden = write_set(tmp_path / "b", [({"object": [box]}, {})])
    maps = np.zeros((1, 3, 4, 4), dtype=np.float32)
    maps[0, 0] = box == 3  # IoU 1 with box
    maps[0, 1, 0, 0] = 1.0  # I 1, A 1, G 2: IoU 1 / 2
    table = concept_iou(reader(maps), 3, broden, quantile=0.5).table(iou_threshold=None)
    assert "is_detector" not in table  # concepts.csv: the threshold is not an IoU input
    half = float(table["iou"][1])
    assert half == pytest.approx(0.5)
    flagged = with_detectors(table, half)
    assert flagged["is_detector"].tolist() == [True, True, False]  # >=: equal IoU is a detector
    assert list(flagged.columns[flagged.columns.get_loc("is_detector") :][:2]) == [
        "is_detector",
        "threshold",
    ]
    assert with_detectors(flagged, 0.6)["is_detector"].tolist() == [True, False, False]


def write_store(path: Path, maps: np.ndarray, paths: Sequence[str]) -> None:
    """A minimal activation store: one layer (maps, mean, max) and a paths dataset."""
    with h5py.File(path, "w") as f:
        f.attrs["layers"] = '["conv"]'
        f.create_dataset("labels", data=np.full(len(maps), -1))
        f.create_dataset("logits", data=np.zeros((len(maps), 2), dtype=np.float32))
        f.create_dataset("paths", data=np.array(list(paths), dtype=h5py.string_dtype()))
        group = f.create_group("layers").create_group("conv")
        group.create_dataset("maps", data=maps)
        group.create_dataset("mean", data=maps.mean(axis=(2, 3)))
        group.create_dataset("max", data=maps.max(axis=(2, 3)))


def test_mismatched_rows_or_paths_raise(tmp_path: Path) -> None:
    box = layer({(0, 0): 3})
    broden = write_set(tmp_path / "b", [({"object": [box]}, {})] * 3)
    maps = np.ones((3, 2, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2, 2\).*3 records"):
        concept_iou(reader(maps[:2]), 2, broden)
    images = [record.image for record in broden.records]
    write_store(tmp_path / "ok.h5", maps, images)
    with ActivationStore(tmp_path / "ok.h5") as store:
        read = store_reader(store, "conv", broden)
        assert np.array_equal(read(slice(1, 2)), maps[:, 1:2])
        assert concept_iou(read, 2, broden).iou.shape == (2, 9)
    write_store(tmp_path / "short.h5", maps[:2], images[:2])
    with (
        ActivationStore(tmp_path / "short.h5") as store,
        pytest.raises(ValueError, match=r"short\.h5 has 2 rows.* has 3 records"),
    ):
        store_reader(store, "conv", broden)
    write_store(tmp_path / "swap.h5", maps, [images[0], images[2], images[1]])
    with (
        ActivationStore(tmp_path / "swap.h5") as store,
        pytest.raises(ValueError, match="row 1 is '002.png'"),
    ):
        store_reader(store, "conv", broden)


def test_token_layer_iou_equals_a_hand_loop_over_patch_tokens(tmp_path: Path) -> None:
    """A ViT block output (1 class token + 4 x 4 patch tokens) through extraction and the store:
    its IoU equals the per-image loop on the patch tokens laid on their grid by hand (class token
    left out of T_u and of the maps), upsampled to each segmentation size as for conv maps."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.models.vision_transformer import VisionTransformer

    from unitablation.extraction import extract_activations

    rng = np.random.default_rng(3)
    broden = random_set(tmp_path / "b", rng, 6)  # segmentation sizes 10 x 14 and 12 x 12
    torch.manual_seed(0)
    model = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=3).eval()
    block = "encoder.layers.encoder_layer_1"
    images = torch.randn(6, 3, 32, 32)
    captured = {}
    hook = model.get_submodule(block).register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("tokens", out.clone())
    )
    with torch.no_grad():
        model(images)
    hook.remove()
    tokens = captured["tokens"].numpy()  # (6, 1 + 16, 16)
    hand = np.empty((6, 16, 4, 4), dtype=np.float32)
    for i in range(4):
        for j in range(4):
            hand[:, :, i, j] = tokens[:, 1 + 4 * i + j, :]
    path = tmp_path / "concept.h5"
    extract_activations(
        model,
        [block],
        DataLoader(TensorDataset(images, torch.full((6,), -1)), batch_size=6),
        path,
        torch.device("cpu"),
        {"classes": ["a", "b", "c"]},
        paths=[record.image for record in broden.records],
    )
    expected = naive_iou(hand, broden, quantile=0.05)
    with ActivationStore(path) as store:
        assert store.layout(block).describe().startswith("tokens (N, 17, 16): 1 prefix + 4 x 4")
        read = store_reader(store, block, broden)
        result = concept_iou(read, 16, broden, quantile=0.05, image_batch=4, counting="union")
    assert np.array_equal(result.thresholds, expected["thresholds"])
    assert np.array_equal(result.intersection, expected["intersection"])
    assert np.array_equal(result.activation, expected["activation"])
    assert np.array_equal(result.iou, expected["iou"])
    assert result.intersection.sum() > 0
    # The class token is not part of the map: thresholds over all tokens would differ.
    with_class = [np.quantile(tokens[:, :, u].astype(np.float64), 0.95) for u in range(16)]
    assert not np.array_equal(result.thresholds, with_class)
