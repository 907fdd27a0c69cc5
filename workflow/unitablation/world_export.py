"""Write the image world to disk: an ImageFolder (train/val) and a Broden-layout concept set.

Both writers build into a temporary sibling directory and rename it into place at the end, so an
interrupted run never leaves a directory that looks complete; an existing output is replaced.

Broden label numbers are global and depend only on the spec: colours, then shapes (object),
then parts ("<shape> rim"), then scenes (class names), then textures. The vocabulary names are
unique across categories, so no suffixes are needed; `world_labels` checks this.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from unitablation.broden import BrodenWriter, LabelDef
from unitablation.world import (
    COLOR_NAMES,
    PARTS,
    SHAPES,
    TEXTURES,
    Scene,
    WorldSpec,
    class_names,
    generate_split,
    split_size,
)

BRODEN_IMAGE_DIR = "world"  # subdirectory of images/ holding the concept images and masks


@contextmanager
def atomic_directory(root: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `root` to fill; on success it replaces `root`, else vanishes."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        tmp.chmod(0o755)
        yield tmp
        if root.exists():
            old = tmp.with_suffix(".old")
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _progress(items: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """Wrap items in a tqdm progress bar on stderr when enabled and tqdm is installed."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, file=sys.stderr, unit="img")


def _save_png(path: Path, image: np.ndarray) -> None:
    """Save an RGB uint8 image as PNG (fast compression: the files are small anyway)."""
    Image.fromarray(image, mode="RGB").save(path, compress_level=1)


def write_image_folder(root: str | Path, spec: WorldSpec, progress: bool = False) -> None:
    """Write root/{train,val}/<class name>/<nnnnn>.png in torchvision ImageFolder layout.

    nnnnn is the image's index within its class; class directories sort in class-index order.
    """
    names = class_names(spec)
    with atomic_directory(root) as tmp:
        for split in ("train", "val"):
            for name in names:
                (tmp / split / name).mkdir(parents=True)
            scenes = _progress(
                generate_split(spec, split), split_size(spec, split), split, progress
            )
            for k, scene in enumerate(scenes):
                _save_png(
                    tmp / split / names[scene.class_index] / f"{k // spec.n_classes:05d}.png",
                    scene.image,
                )


def world_labels(spec: WorldSpec) -> dict[str, dict[int, LabelDef]]:
    """Global Broden labels of the world per category, keyed by the Scene's local value.

    Local values: colour index + 1, shape index + 1, part index + 1, class index, texture index.
    """
    vocab = {
        "color": {i + 1: name for i, name in enumerate(COLOR_NAMES)},
        "object": {i + 1: name for i, name in enumerate(SHAPES)},
        "part": {i + 1: name for i, name in enumerate(PARTS)},
        "scene": dict(enumerate(class_names(spec))),
        "texture": dict(enumerate(TEXTURES)),
    }
    result, number = {}, 0
    for category, names in vocab.items():
        result[category] = {}
        for local, name in names.items():
            number += 1
            result[category][local] = LabelDef(number, name, category)
    all_names = [lab.name for labels in result.values() for lab in labels.values()]
    if len(set(all_names)) != len(all_names):
        raise ValueError("world label names are not unique across categories")
    return result


def _to_global(layer: np.ndarray, labels: dict[int, LabelDef]) -> np.ndarray:
    """Map a layer of local label values (0 = none) to global label numbers."""
    lookup = np.zeros(max(labels) + 1, dtype=np.int32)
    for local, lab in labels.items():
        lookup[local] = lab.number
    return lookup[layer]


def write_broden(
    root: str | Path, scenes: Iterable[Scene], spec: WorldSpec, split: str = "train"
) -> None:
    """Write scenes as a Broden-layout directory at `root` (atomically), PNG images and masks.

    Images are images/world/<nnnnn>.png with masks <nnnnn>_<category>[_<layer>].png beside them;
    every row gets `split` in index.csv; the material column exists and stays empty.
    """
    labels = world_labels(spec)
    with atomic_directory(root) as tmp:
        writer = BrodenWriter(tmp, [lab for cat in labels.values() for lab in cat.values()])
        for k, scene in enumerate(scenes):
            pixel = {
                "color": [_to_global(scene.color, labels["color"])],
                "object": [_to_global(layer, labels["object"]) for layer in scene.object_layers],
                "part": [_to_global(layer, labels["part"]) for layer in scene.part_layers],
            }
            image_level = {
                "scene": [labels["scene"][scene.scene].number],
                "texture": [labels["texture"][scene.texture].number],
            }
            writer.add(f"{BRODEN_IMAGE_DIR}/{k:05d}", scene.image, pixel, image_level, split=split)
        writer.close()


def write_concept_set(root: str | Path, spec: WorldSpec, progress: bool = False) -> None:
    """Write the world's "concept" split as a Broden-layout directory at `root`."""
    scenes = _progress(
        generate_split(spec, "concept"), split_size(spec, "concept"), "concept", progress
    )
    write_broden(root, scenes, spec)
