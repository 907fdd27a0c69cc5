"""A unit's Network Dissection mask: its map upsampled bilinearly, then strictly above T_u.

The one definition (docs/definitions.md) used by the concept IoU (torch, many maps at once) and
by the example figures (numpy, one map at a time): upsample the (h, w) map to the segmentation
size with bilinear interpolation, align_corners=False (each output pixel samples the input at
(i + 0.5) * h / H - 0.5, clamped at the border), then keep the pixels whose value is > T_u.
Torch-free at import: the torch implementation imports torch when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) interpolation matrix of bilinear upsampling, align_corners=False."""
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    source = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    fraction = source - low
    rows = np.arange(size_out)
    np.add.at(weights, (rows, low), 1.0 - fraction)
    np.add.at(weights, (rows, high), fraction)
    return weights


def upsample_numpy(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) maps upsampled to (..., *size) in float64; unchanged values if equal."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.shape[-2:] == tuple(size):
        return maps
    rows = bilinear_weights(maps.shape[-2], size[0])
    columns = bilinear_weights(maps.shape[-1], size[1])
    return rows @ maps @ columns.T


def upsample_torch(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) maps upsampled to (B, C, *size) on their device and dtype; identity if equal."""
    import torch.nn.functional as F

    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def unit_mask(activation_map: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """(H, W) bool mask of one (h, w) map: upsampled to `size`, then > threshold (numpy)."""
    return upsample_numpy(activation_map, size) > threshold


def unit_masks_torch(
    maps: torch.Tensor, size: tuple[int, int], thresholds: torch.Tensor
) -> torch.Tensor:
    """(B, C, H, W) bool masks of (B, C, h, w) maps with one threshold per unit (C,) (torch)."""
    return upsample_torch(maps, size) > thresholds.to(maps.dtype)[None, :, None, None]
