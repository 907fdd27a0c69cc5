"""Image loading and preprocessing for class-labelled folders and concept sets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .recipes import INTERPOLATIONS, source_recipe

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


@dataclass(frozen=True)
class Preprocess:
    """How images become network input: optional resize and centre crop, then normalisation."""

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"preprocess interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}"
            )

    @classmethod
    def from_config(cls, entry: Mapping[str, Any] | None) -> Preprocess:
        """Read a `preprocess` config block (missing keys keep the defaults)."""
        entry = dict(entry or {})
        return cls(
            resize=entry.get("resize"),
            crop=entry.get("crop"),
            mean=tuple(entry.get("mean", cls.mean)),
            std=tuple(entry.get("std", cls.std)),
            interpolation=str(entry.get("interpolation", cls.interpolation)),
        )

    def to_json(self) -> str:
        """Stable JSON form, stored as provenance in HDF5 files (bilinear, the filter every
        earlier store used, is left implicit so that their provenance stays byte-identical)."""
        fields = asdict(self)
        if fields["interpolation"] == "bilinear":
            del fields["interpolation"]
        return json.dumps(fields, sort_keys=True)

    def describe(self) -> str:
        """One line for logs: resize, crop, mean, std and filter."""
        mean = ", ".join(f"{value:g}" for value in self.mean)
        std = ", ".join(f"{value:g}" for value in self.std)
        return (
            f"resize {self.resize or 'none'}, crop {self.crop or 'none'}, mean ({mean}), "
            f"std ({std}), {self.interpolation}"
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Turn a PIL image into a normalised float tensor (3, H, W)."""
        image = image.convert("RGB")
        if self.resize:
            width, height = image.size
            scale = self.resize / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(size, Image.Resampling[self.interpolation.upper()])
        if self.crop:
            width, height = image.size
            left = (width - self.crop) // 2
            top = (height - self.crop) // 2
            image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (pixels - mean) / std


def model_preprocess(entry: Mapping[str, Any]) -> Preprocess:
    """Preprocessing of a `models.<name>` entry: its source's recipe, overridden key by key by
    the entry's `preprocess` block (recipes.source_recipe says what each source knows)."""
    return Preprocess.from_config({**source_recipe(entry), **dict(entry.get("preprocess") or {})})


def default_preprocess(arch: str, entry: Mapping[str, Any] | None = None) -> Preprocess:
    """Preprocessing for an `arch` string and an optional `preprocess` block (model_preprocess
    for an entry that has no other keys)."""
    return model_preprocess({"arch": arch, "preprocess": entry})


def model_input_size(entry: Mapping[str, Any], image_size: int) -> int:
    """Side of the square network input: the preprocessing's crop (or resize), else the entry's
    `image_size`, else `image_size` (the world's images, seen as they are)."""
    preprocess = model_preprocess(entry)
    return int(preprocess.crop or preprocess.resize or entry.get("image_size") or image_size)


class ImageFolderSet(Dataset):
    """A class-per-folder image set (torchvision ImageFolder layout) with a sorted, stable order."""

    def __init__(self, root: str | Path, preprocess: Preprocess) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        if not self.classes:
            raise ValueError(f"image folder {self.root} has no class subfolders")
        self.samples: list[tuple[Path, int]] = []
        for index, name in enumerate(self.classes):
            files = sorted(
                path
                for path in (self.root / name).rglob("*")
                if path.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise ValueError(f"class folder {self.root / name} holds no images")
            self.samples.extend((path, index) for path in files)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def relative_paths(self) -> list[str]:
        """Image paths relative to the root, in dataset order."""
        return [path.relative_to(self.root).as_posix() for path, _ in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                tensor = self.preprocess(image)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
        return tensor, label


class FileListSet(Dataset):
    """Images given as an explicit list of files (the concept set), each with an integer tag."""

    def __init__(self, files: Sequence[Path], tags: Sequence[int], preprocess: Preprocess) -> None:
        if len(files) != len(tags):
            raise ValueError("files and tags differ in length")
        self.files = [Path(path) for path in files]
        self.tags = list(tags)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                tensor = self.preprocess(image)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
        return tensor, self.tags[index]


def stack_dataset(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole (small) dataset into two tensors; used to train the miniature models."""
    images, labels = zip(*(dataset[index] for index in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
