"""Preprocessing each model source publishes (timm's pretrained config, torchvision's weights
metadata) and the network's input side that follows from it; config overrides key by key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model_sources import Source, entry_source

#: Resampling filters a recipe may name (PIL's, by torchvision's and timm's names).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The classic ImageNet evaluation recipe: short side 256, centre crop 224 (crop fraction 0.875).
IMAGENET_RECIPE: dict[str, Any] = {
    "resize": 256,
    "crop": 224,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bilinear",
}


def known_interpolation(name: str) -> str:
    """A published filter name if this pipeline has it, else bilinear."""
    return name if name in INTERPOLATIONS else "bilinear"


def scaled(recipe: Mapping[str, Any], crop: int) -> dict[str, Any]:
    """The recipe for another crop side, keeping its crop fraction (resize = crop / fraction)."""
    fraction = recipe["crop"] / recipe["resize"]
    return {**recipe, "crop": int(crop), "resize": round(crop / fraction)}


def square_side(value: Any, key: str) -> int:
    """One side of a square input from an int or an (h, w) pair; ValueError if not square."""
    if isinstance(value, int):
        return value
    sides = list(value)[-2:]
    if len(sides) != 2 or sides[0] != sides[1]:
        raise ValueError(f"{key} {value!r}: only square inputs are supported")
    return int(sides[0])


def torchvision_recipe(name: str) -> dict[str, Any]:
    """Resize, crop, mean and std of a torchvision architecture's registered weights.

    The IMAGENET1K_V1 weights' recipe when registered (the classic one, which the earlier
    default matched for every architecture that had one), else the DEFAULT weights'; the
    ImageNet recipe for an architecture without registered weights.
    """
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name)
    except (KeyError, ValueError):
        return dict(IMAGENET_RECIPE)
    chosen = getattr(weights, "IMAGENET1K_V1", None) or weights.DEFAULT
    transform = chosen.transforms()
    return {
        "resize": int(transform.resize_size[0]),
        "crop": int(transform.crop_size[0]),
        "mean": tuple(float(v) for v in transform.mean),
        "std": tuple(float(v) for v in transform.std),
        "interpolation": known_interpolation(str(transform.interpolation.value)),
    }


def timm_recipe(name: str) -> dict[str, Any]:
    """Resize (crop / crop_pct), crop (input_size), mean, std, interpolation of timm's
    pretrained config for `name`; the ImageNet recipe when timm has none."""
    import timm

    config = timm.models.get_pretrained_cfg(name)
    if config is None:
        return dict(IMAGENET_RECIPE)
    crop = int(config.input_size[-1])
    return {
        "resize": round(crop / config.crop_pct),
        "crop": crop,
        "mean": tuple(float(v) for v in config.mean),
        "std": tuple(float(v) for v in config.std),
        "interpolation": known_interpolation(config.interpolation),
    }


def source_recipe(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing a model entry's source knows, before the config's `preprocess` block.

    tinyalex sees the world's images as they are; torchvision and timm give their published
    recipe, rescaled to a reduced input (`image_size` / `img_size` in model_kwargs); a factory
    gets the ImageNet recipe at its `input_size` (224 when unset).
    """
    source = entry_source(entry)
    if source.kind == "tinyalex":
        return {}
    if source.kind == "factory":
        recipe = dict(IMAGENET_RECIPE)
        side = entry.get("input_size")
        return scaled(recipe, int(side)) if side else recipe
    recipe = (
        torchvision_recipe(source.name)
        if source.kind == "torchvision"
        else timm_recipe(source.name)
    )
    size = model_size_kwarg(source)
    return scaled(recipe, size) if size else recipe


def model_size_kwarg(source: Source) -> int | None:
    """The input side a builder kwarg sets: `image_size` (torchvision), `img_size` (timm)."""
    key = "image_size" if source.kind == "torchvision" else "img_size"
    value = source.kwargs.get(key)
    return None if value is None else square_side(value, f"model_kwargs.{key}")
