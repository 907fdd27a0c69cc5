"""Replacing units (or rotated directions) in a layer output: many ablated copies in one tensor.

One evaluation call ablates a `UnitGroup`: copy g of the layer output has entry g ablated, where
an entry is one unit (singles) or a set of units ablated together (sets). A unit is the index
along `unit_dim` of the raw layer output: 1 for conv (N, C, H, W) and linear (N, C) outputs, 2
for tokens (N, L, C), where a unit is a feature channel replaced at every token. The arithmetic
is written once for channel-first tensors; other layouts move their unit axis to 1 and back.

- Unit basis: the unit's values become its replacement v_u (0, or its mean).
- Rotated basis (rows r_j of R): unit j is the direction r_j; ablating a set J removes it,
  a' = a - sum_{j in J} r_j (r_j . a - v_j). A single direction costs one dot product per
  position (a' = a - r_j (z_j - v_j)); a set costs the full rotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class UnitGroup:
    """The entries one evaluation call ablates: copy g of the layer output ablates entry g.

    Singles have `units` (G,): copy g ablates unit units[g]. Sets have (`rows`, `cols`) index
    pairs of a (G, C) mask: copy g ablates every unit u with a pair (g, u). A call is padded to
    `size` entries by repeating its last one; the first `count` are real. `start` is the first
    of singles that are consecutive units (a slice of per-unit tensors then needs no gather),
    else -1.
    """

    size: int
    count: int
    units: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    highest: int = -1
    start: int = -1

    @property
    def is_sets(self) -> bool:
        """Whether the entries are unit sets (a mask) rather than single units (an index)."""
        return self.units is None


def single_groups(units: np.ndarray, per_call: int) -> list[UnitGroup]:
    """Single units in calls of `per_call` entries, the last padded with its last unit."""
    groups = []
    for start in range(0, len(units), per_call):
        group = units[start : start + per_call]
        padded = np.concatenate([group, np.repeat(group[-1:], per_call - len(group))])
        consecutive = bool(np.all(np.diff(padded) == 1)) and padded[0] >= 0
        start = int(padded[0]) if consecutive else -1
        groups.append(UnitGroup(per_call, len(group), units=torch.from_numpy(padded), start=start))
    return groups


def unique_sets(unit_sets: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Each set as its sorted distinct units (a unit listed twice is ablated once)."""
    sets = [np.unique(np.asarray(list(units), dtype=np.int64)) for units in unit_sets]
    for units in sets:
        if len(units) and units[0] < 0:
            raise ValueError(f"negative unit index in set {units.tolist()}")
    return sets


def set_groups(
    unit_sets: Sequence[Sequence[int]], per_call: int, device: torch.device
) -> list[UnitGroup]:
    """Unit sets in calls of `per_call` entries, the last padded with its last set."""
    sets = unique_sets(unit_sets)
    groups = []
    for start in range(0, len(sets), per_call):
        group = sets[start : start + per_call]
        count = len(group)
        group = group + [group[-1]] * (per_call - count)
        rows = np.concatenate([np.full(len(units), row) for row, units in enumerate(group)])
        cols = np.concatenate(group)
        groups.append(
            UnitGroup(
                per_call,
                count,
                rows=torch.from_numpy(rows.astype(np.int64)).to(device),
                cols=torch.from_numpy(cols).to(device),
                highest=int(cols.max()) if len(cols) else -1,
            )
        )
    return groups


def group_mask(group: UnitGroup, channels: int, device: torch.device) -> torch.Tensor:
    """(G, C) boolean mask of a sets group: True where copy g ablates unit c."""
    if group.highest >= channels:
        raise ValueError(f"unit index {group.highest} out of range: layer has {channels} units")
    mask = torch.zeros(group.size, channels, dtype=torch.bool, device=device)
    mask[group.rows, group.cols] = True
    return mask


def replacement_values(
    replacement: torch.Tensor | None, channels: int, like: torch.Tensor
) -> torch.Tensor:
    """The value per unit (or direction) that ablation writes: zero, or the configured values."""
    if replacement is None:
        return torch.zeros(channels, dtype=like.dtype, device=like.device)
    if replacement.shape != (channels,):
        raise ValueError(
            f"replacement has shape {tuple(replacement.shape)}, layer has {channels} channels"
        )
    return replacement.to(like.device, like.dtype)


def check_rotation(rotation: torch.Tensor, channels: int) -> None:
    """Fail unless `rotation` is a (C, C) matrix for the layer's C units."""
    if rotation.shape != (channels, channels):
        raise ValueError(f"rotation {tuple(rotation.shape)} does not fit {channels} units")


def replace(
    maps: torch.Tensor,
    group: UnitGroup,
    replacement: torch.Tensor | None,
    rotation: torch.Tensor | None,
    unit_dim: int = 1,
) -> torch.Tensor:
    """(B, ...) layer output -> (G, B, ...) copies with entry g of `group` ablated in copy g."""
    if unit_dim == 1:
        return _replace_channels(maps, group, replacement, rotation)
    moved = _replace_channels(maps.movedim(unit_dim, 1), group, replacement, rotation)
    return moved.movedim(2, unit_dim + 1).contiguous()


def _replace_channels(
    maps: torch.Tensor,
    group: UnitGroup,
    replacement: torch.Tensor | None,
    rotation: torch.Tensor | None,
) -> torch.Tensor:
    """`replace` for a channel-first (B, C, ...) tensor."""
    channels = maps.shape[1]
    values = replacement_values(replacement, channels, maps)
    if rotation is not None:
        check_rotation(rotation, channels)
    if group.is_sets:
        return _replace_sets(maps, group_mask(group, channels, maps.device), values, rotation)
    if rotation is not None:
        return _replace_direction(maps, group.units, values, rotation)
    copies = maps.unsqueeze(0).repeat(group.size, *([1] * maps.dim()))
    index = torch.arange(group.size, device=maps.device)
    units = group.units.to(maps.device)
    copies[index, :, units] = values[units].view(-1, 1, *([1] * (maps.dim() - 2)))
    return copies


def _replace_direction(
    maps: torch.Tensor, units: torch.Tensor, values: torch.Tensor, rotation: torch.Tensor
) -> torch.Tensor:
    """Copy g with the single direction r_{units[g]} removed: a' = a - r_j (z_j - v_j)."""
    directions = rotation[units.to(rotation.device)].to(maps.dtype)  # (G, C)
    values = values[units.to(maps.device)]
    coordinates = torch.einsum("gc,bc...->gb...", directions, maps)  # (G, B, ...)
    shift = coordinates - values.view(-1, *([1] * (coordinates.dim() - 1)))
    spread = directions.view(
        *directions.shape[:1], 1, directions.shape[1], *([1] * (maps.dim() - 2))
    )
    return maps.unsqueeze(0) - spread * shift.unsqueeze(2)


def _replace_sets(
    maps: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, rotation: torch.Tensor | None
) -> torch.Tensor:
    """Copy g with the units (or directions) of mask row g ablated together."""
    channels = maps.shape[1]
    spatial = [1] * (maps.dim() - 2)
    selected = mask.view(len(mask), 1, channels, *spatial)
    if rotation is None:
        return torch.where(selected, values.view(1, 1, channels, *spatial), maps.unsqueeze(0))
    rotation = rotation.to(maps.dtype)
    coordinates = torch.einsum("jc,bc...->bj...", rotation, maps)
    shift = coordinates - values.view(1, channels, *spatial)
    removed = torch.einsum("jc,gbj...->gbc...", rotation, selected * shift.unsqueeze(0))
    return maps.unsqueeze(0) - removed
