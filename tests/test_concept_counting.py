"""Concept IoU under the three counting rules against a per-image, per-unit loop (NetDissect-Lite).

The Broden folder is written by hand (CSV files and R + 256 G mask PNGs, no project writer): two
overlapping object layers and two overlapping part layers, a label listed in two categories
(more images in object, more coverage in part: its primary category is part), an object cell
holding only that label (so object is not present there), image-level scene and texture labels
and an image with no pixel labels at all.

The loop follows the tally of NetDissect-Lite's feature_operation.py: per image, every layer of
every category (image-level labels as a whole-image layer) is a list of label occurrences; per
unit whose map max exceeds T_u, the map is upsampled and thresholded, the occurrences under the
mask are counted per label (I) and, by their labels' primary categories, decide which categories
the mask touches ("lite" A). Unlike the published code, whose touched-category tally carries over
from the previous unit for an image without pixel layers, the loop starts it from zero. Masks are
upsampled with torch's bilinear interpolation (align_corners=False), the project's definition,
where NetDissect-Lite uses PIL's imresize.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unitablation.broden import read_broden
from unitablation.concepts import COUNTING, concept_iou, concept_labels

CATEGORIES = ["color", "object", "part", "scene", "texture"]
# number, name, label.csv category cell, {category: coverage in c_<category>.csv}
LABELS = [
    (1, "red", "color(6)", {"color": 0.4}),
    (2, "green", "color(6)", {"color": 0.3}),
    (3, "car", "object(5)", {"object": 0.2}),
    (4, "tree", "object(5)", {"object": 0.25}),
    (5, "wheel", "object(5);part(3)", {"object": 0.1, "part": 0.3}),
    (6, "door", "part(4)", {"part": 0.1}),
    (7, "beach", "scene(4)", {"scene": 1.0}),
    (8, "forest", "scene(3)", {"scene": 1.0}),
    (9, "striped", "texture(3)", {"texture": 1.0}),
]
PRIMARY = {number: "part" if number == 5 else next(iter(cov)) for number, _, _, cov in LABELS}
SEG = (6, 6)
MAP = (3, 3)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    """A CSV file with a header."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def save_ids(path: Path, ids: np.ndarray) -> None:
    """A mask PNG: label number = R + 256 * G."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = ids % 256, ids // 256
    Image.fromarray(rgb, mode="RGB").save(path)


def images(rng: np.random.Generator) -> list[dict[str, list]]:
    """Per image, per category: mask layers (arrays) or image-level label numbers."""
    car = np.zeros(SEG, np.int64)
    car[1:4, 1:4] = 3
    second = np.zeros(SEG, np.int64)
    second[2:5, 2:5] = 3  # overlaps the first car layer on 4 pixels
    second[0, 5] = 4
    wheel = np.zeros(SEG, np.int64)
    wheel[3:5, 0:3] = 5
    wheel[0, 0] = 6
    wheel_again = np.zeros(SEG, np.int64)
    wheel_again[4:6, 1:3] = 5  # 2 pixels hold wheel in both part layers
    color = rng.choice([0, 1, 2], size=SEG, p=[0.2, 0.5, 0.3])
    only_wheel = np.zeros(SEG, np.int64)
    only_wheel[0:2, 3:6] = 5  # an object layer holding only a part label
    cars_and_wheels = car.copy()
    cars_and_wheels[4, :] = 5
    result: list[dict[str, list]] = [
        {"color": [color], "object": [car, second], "part": [wheel, wheel_again], "scene": [7]},
        {"object": [cars_and_wheels], "texture": [9]},
        {"scene": [8]},  # no pixel labels
        {"color": [rng.choice([0, 1], size=SEG)], "object": [only_wheel], "scene": [7]},
    ]
    for k in range(6):
        image: dict[str, list] = {"color": [rng.choice([0, 1, 2], size=SEG)]}
        image["object"] = [rng.choice([0, 3, 4, 5], size=SEG) for _ in range(1 + k % 2)]
        if k % 3:
            image["part"] = [
                rng.choice([0, 5, 6], size=SEG, p=[0.6, 0.2, 0.2]) for _ in range(k % 3)
            ]
        image["scene"] = [7 + k % 2]
        if k % 2:
            image["texture"] = [9]
        result.append(image)
    return result


def build(root: Path, content: list[dict[str, list]]) -> None:
    """Write the Broden folder: images/, index.csv, label.csv, category.csv, c_*.csv."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i, image in enumerate(content):
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "images" / f"{i}.jpg")
        row: dict[str, object] = {"image": f"{i}.jpg", "split": "train", "ih": 12, "iw": 12}
        row |= {"sh": SEG[0], "sw": SEG[1]}
        for category in CATEGORIES:
            entries = []
            for k, item in enumerate(image.get(category, [])):
                if isinstance(item, int):
                    entries.append(str(item))
                else:
                    name = f"{i}_{category}_{k + 1}.png"
                    save_ids(root / "images" / name, item)
                    entries.append(name)
            row[category] = ";".join(entries)
        rows.append(row)
    meta = ["image", "split", "ih", "iw", "sh", "sw"]
    write_csv(root / "index.csv", meta + CATEGORIES, rows)
    label_rows = [
        {"number": n, "name": name, "category": cell, "frequency": 1, "coverage": 0.5, "syns": ""}
        for n, name, cell, _ in LABELS
    ]
    write_csv(root / "label.csv", list(label_rows[0]), label_rows)
    category_rows = []
    for category in CATEGORIES:
        members = [(n, name, cov[category]) for n, name, _, cov in LABELS if category in cov]
        code_rows = [
            {"code": code, "number": n, "name": name, "frequency": 1, "coverage": coverage}
            for code, (n, name, coverage) in enumerate(members, start=1)
        ]
        write_csv(root / f"c_{category}.csv", list(code_rows[0]), code_rows)
        numbers = [n for n, _, _ in members]
        category_rows.append(
            {"name": category, "first": min(numbers), "last": max(numbers), "count": len(numbers)}
        )
    write_csv(root / "category.csv", list(category_rows[0]) + ["frequency"], category_rows)


def read_occurrences(root: Path) -> list[tuple[np.ndarray, list[int]]]:
    """Per image, as NetDissect-Lite reads it: stacked pixel layers and image-level labels."""
    with (root / "index.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    result = []
    for row in rows:
        layers, scalars = [], []
        for category in CATEGORIES:
            for entry in filter(None, row[category].split(";")):
                if entry.isdigit():
                    scalars.append(int(entry))
                else:
                    rgb = np.asarray(Image.open(root / "images" / entry).convert("RGB"))
                    layers.append(rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64))
        pixels = np.stack(layers) if layers else np.zeros((0, *SEG), np.int64)
        result.append((pixels, scalars))
    return result


def loop_counts(maps: np.ndarray, root: Path, quantile: float, counting: str) -> dict:
    """I, A (per category), G and IoU by an explicit per-image, per-unit loop."""
    n_images, n_units = maps.shape[:2]
    numbers = [n for n, _, _, _ in LABELS]  # every label here has a primary category
    size = max(numbers) + 1
    labelcat = np.zeros((size, len(CATEGORIES)), np.int64)  # one-hot primary category
    for n in numbers:
        labelcat[n, CATEGORIES.index(PRIMARY[n])] = 1
    thresholds = [np.quantile(maps[:, u].astype(np.float64), 1 - quantile) for u in range(n_units)]
    truth = np.zeros(size, np.int64)
    both = np.zeros((n_units, size), np.int64)
    units_cat = np.zeros((n_units, len(CATEGORIES)), np.int64)
    for i, (pixels, scalars) in enumerate(read_occurrences(root)):
        whole = SEG[0] * SEG[1]
        if counting == "union":
            carried = {
                n: (pixels == n).any(axis=0) | (n in scalars) for n in numbers
            }  # each pixel once per label
            for n in numbers:
                truth[n] += int(carried[n].sum())
        else:
            for scalar in scalars:
                truth[scalar] += whole
            if len(pixels):
                counted = np.bincount(pixels.ravel(), minlength=size)
                counted[0] = 0
                truth += counted
        present = np.zeros(len(CATEGORIES), np.int64)
        for n in set(np.unique(pixels).tolist()) | set(scalars):
            if n:
                present += labelcat[n]
        for u in range(n_units):
            feature = maps[i, u]
            if not feature.max() > thresholds[u]:
                continue
            up = F.interpolate(
                torch.from_numpy(feature)[None, None],
                size=SEG,
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            mask = up > thresholds[u]
            area = int(mask.sum())
            tally_cat = np.zeros(len(CATEGORIES), np.int64)
            if counting == "union":
                for n in numbers:
                    both[u, n] += int((mask & carried[n]).sum())
            else:
                if len(pixels):
                    under = np.bincount(pixels[:, mask].ravel(), minlength=size)
                    under[0] = 0
                    both[u] += under
                    tally_cat += under @ labelcat
                for scalar in scalars:
                    tally_cat += labelcat[scalar]
                    both[u, scalar] += area
            if counting == "lite":
                units_cat[u] += area * (tally_cat > 0)
            else:
                units_cat[u] += area * (present > 0)
    activation = units_cat @ labelcat.T  # A of each label: its primary category's count
    iou = both / (activation + truth[None, :] - both + 1e-10)
    return {
        "iou": iou[:, numbers],
        "intersection": both[:, numbers],
        "activation": units_cat,
        "ground_truth": truth[numbers],
        "thresholds": np.array(thresholds),
    }


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The hand-built Broden folder and seeded maps of 6 units (unit 4 dead)."""
    rng = np.random.default_rng(12)
    root = tmp_path_factory.mktemp("counting") / "broden"
    content = images(rng)
    build(root, content)
    maps = np.maximum(rng.standard_normal((len(content), 6, *MAP)), 0).astype(np.float32)
    maps[:, 4] = 0.0
    maps[2, 5] = 9.0  # fires over the whole image without pixel labels
    return root, maps


def test_primary_category_comes_from_coverage(hand_built: tuple[Path, np.ndarray]) -> None:
    broden = read_broden(hand_built[0])
    assert broden.label_categories[5] == {"object": 5, "part": 3}  # more images in object
    assert broden.category_of_label == PRIMARY  # coverage 0.3 in part against 0.1


@pytest.mark.parametrize("counting", COUNTING)
def test_counting_equals_the_per_image_per_unit_loop(
    hand_built: tuple[Path, np.ndarray], counting: str
) -> None:
    root, maps = hand_built
    broden = read_broden(root)
    expected = loop_counts(maps, root, 0.2, counting)
    labels = concept_labels(broden)
    for unit_block, image_batch in ((64, 64), (4, 3), (1, 1)):
        result = concept_iou(
            lambda units: maps[:, units],
            maps.shape[1],
            labels,
            quantile=0.2,
            unit_block=unit_block,
            image_batch=image_batch,
            counting=counting,
        )
        assert result.counting == counting
        assert result.label_categories[4] == "part"  # wheel's column is a part concept
        assert list(result.categories) == CATEGORIES
        for name, value in expected.items():
            assert np.array_equal(getattr(result, name), value), (counting, name)
        assert float(np.abs(result.iou - expected["iou"]).max()) == 0.0
    assert result.intersection[5].sum() > 0 and not result.intersection[4].any()


def test_the_three_rules_differ_where_they_should(hand_built: tuple[Path, np.ndarray]) -> None:
    root, maps = hand_built
    labels = concept_labels(read_broden(root))
    results = {
        rule: concept_iou(lambda units: maps[:, units], 6, labels, quantile=0.2, counting=rule)
        for rule in COUNTING
    }
    union, netdissect, lite = results["union"], results["netdissect"], results["lite"]
    # occurrences: car holds 4 doubly covered pixels in image 0, wheel 2; wheel also counts in
    # object layers (images 1, 3 and the random ones), which union and netdissect both see
    car, wheel = 2, 4
    assert netdissect.ground_truth[car] > union.ground_truth[car]
    assert netdissect.ground_truth[wheel] > union.ground_truth[wheel]
    assert np.array_equal(netdissect.ground_truth, lite.ground_truth)
    assert np.array_equal(union.activation, netdissect.activation)
    assert (lite.activation <= netdissect.activation).all()
    assert (lite.activation < netdissect.activation).any()
    assert not np.array_equal(union.iou, netdissect.iou)
    # image 3's object cell holds only wheel (primary part): object is not present there
    object_k = CATEGORIES.index("object")
    only_image_3 = np.zeros_like(maps)
    only_image_3[3] = maps[3]
    alone = concept_iou(lambda units: only_image_3[:, units], 6, labels, quantile=0.2)
    assert not alone.activation[:, object_k].any() and alone.activation.any()


def test_unknown_counting_is_rejected(hand_built: tuple[Path, np.ndarray]) -> None:
    root, maps = hand_built
    with pytest.raises(ValueError, match="counting must be one of netdissect, lite, union"):
        concept_iou(lambda units: maps[:, units], 6, read_broden(root), counting="sum")
