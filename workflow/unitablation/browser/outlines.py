"""A unit's Network Dissection mask drawn as a transparent overlay: the mask's boundary in a
solid colour and its inside lightly tinted, as a PNG data URI at the image's size."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

OUTLINE_RGBA = (255, 214, 0, 255)
FILL_RGBA = (255, 214, 0, 56)


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: mask pixels with a 4-neighbour outside the mask (the image edge counts as
    outside, so a region touching the border is closed there)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    inner = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )  # all four neighbours inside
    return mask & ~inner


def overlay_rgba(mask: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 overlay: boundary opaque, inside tinted, outside transparent."""
    mask = np.asarray(mask, dtype=bool)
    rgba = np.zeros(mask.shape + (4,), dtype=np.uint8)
    rgba[mask] = FILL_RGBA
    rgba[boundary(mask)] = OUTLINE_RGBA
    return rgba


def png_data_uri(rgba: np.ndarray) -> str:
    """An (H, W, 4) uint8 array as a `data:image/png;base64,...` URI (deterministic bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_overlay_uri(mask: np.ndarray) -> str:
    """The overlay of one mask as a PNG data URI."""
    return png_data_uri(overlay_rgba(mask))
