"""What a unit is in a layer's output: conv channel, linear feature or token feature channel.

Every module that reads, summarises, maps or replaces a layer's output asks a `Layout`, so no
other code assumes "dimension 1 of NCHW". The canonical map of a layout is (N, C, h, w): a conv
layer's own output, a linear layer's features as 1 x 1 maps, a token layer's patch tokens laid on
their grid (prefix tokens such as class, distillation or register tokens kept apart). The array
methods take torch tensors or numpy arrays alike, so readers without torch can use them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The layouts a layer output can have.
LAYOUT_KINDS = ("conv", "linear", "tokens")

#: Prefix tokens inferred from a token count alone: none, a class token, or class + distillation
#: token (DeiT). Other counts (register tokens) must come from the model or the config.
MAX_INFERRED_PREFIX = 2

#: The config key that states a model's prefix tokens explicitly.
PREFIX_KEY = "models.<name>.prefix_tokens"

#: Shapes a layout reads, for error messages.
SUPPORTED_SHAPES = "(N, C, H, W) conv, (N, C) linear or (N, L, C) tokens"


@dataclass(frozen=True)
class Layout:
    """How one layer's raw output holds its units, and its canonical (N, C, h, w) map."""

    kind: str
    units: int
    grid: tuple[int, int]
    prefix: int = 0

    def __post_init__(self) -> None:
        # Plain ints (h5py attributes and torch sizes give numpy ints), so JSON and == work.
        object.__setattr__(self, "units", int(self.units))
        object.__setattr__(self, "grid", tuple(int(side) for side in self.grid))
        object.__setattr__(self, "prefix", int(self.prefix))
        if self.kind not in LAYOUT_KINDS:
            raise ValueError(f"layout kind {self.kind!r} is none of {LAYOUT_KINDS}")
        if self.units < 1 or len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"layout needs units >= 1 and a grid of two sides >= 1: {self}")
        if self.prefix < 0 or (self.prefix and self.kind != "tokens"):
            raise ValueError(f"only a tokens layout has prefix tokens (>= 0): {self}")
        if self.kind == "linear" and tuple(self.grid) != (1, 1):
            raise ValueError(f"a linear layout has a 1 x 1 grid: {self}")

    @property
    def unit_dim(self) -> int:
        """Axis of the units in the raw (N, ...) layer output."""
        return 2 if self.kind == "tokens" else 1

    @property
    def positions(self) -> int:
        """Positions of a unit's map (h * w): what the mean and max summarise."""
        return self.grid[0] * self.grid[1]

    def output_shape(self) -> tuple[int, ...]:
        """Per-image shape of the raw layer output."""
        if self.kind == "conv":
            return (self.units, *self.grid)
        if self.kind == "linear":
            return (self.units,)
        return (self.prefix + self.positions, self.units)

    def map_shape(self) -> tuple[int, int, int]:
        """Per-image shape of the canonical map (C, h, w)."""
        return (self.units, *self.grid)

    def to_maps(self, output: Any) -> Any:
        """Raw (N, ...) output -> (N, C, h, w) maps; tokens: the patch tokens, prefix excluded."""
        self._check(output, self.output_shape(), "layer output")
        if self.kind == "conv":
            return output
        if self.kind == "linear":
            return output[:, :, None, None]
        patches = output[:, self.prefix :, :].swapaxes(1, 2)
        return _contiguous(patches.reshape(len(output), *self.map_shape()))

    def prefix_tokens(self, output: Any) -> Any | None:
        """The prefix tokens (N, prefix, C) of a tokens output, else None."""
        self._check(output, self.output_shape(), "layer output")
        return _contiguous(output[:, : self.prefix, :]) if self.prefix else None

    def from_maps(self, maps: Any, prefix: Any | None = None) -> Any:
        """Exact inverse of `to_maps`: the raw layer output from its maps (and prefix tokens)."""
        self._check(maps, self.map_shape(), "maps")
        if self.kind == "conv":
            return maps
        if self.kind == "linear":
            return maps[:, :, 0, 0]
        patches = maps.reshape(len(maps), self.units, self.positions).swapaxes(1, 2)
        if not self.prefix:
            return _contiguous(patches)
        if prefix is None:
            raise ValueError(f"{self.describe()}: the prefix tokens are needed to rebuild it")
        self._check(prefix, (self.prefix, self.units), "prefix tokens")
        return _concatenate([prefix, patches])

    def to_json(self) -> str:
        """The layout as a JSON object (stored as an HDF5 attribute)."""
        fields = {"kind": self.kind, "units": self.units, "grid": list(self.grid)}
        return json.dumps({**fields, "prefix": self.prefix}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Layout:
        """Parse `to_json`'s text; a ValueError quoting it when it is no layout."""
        try:
            fields = json.loads(text)
            return cls(
                str(fields["kind"]),
                int(fields["units"]),
                (int(fields["grid"][0]), int(fields["grid"][1])),
                int(fields.get("prefix", 0)),
            )
        except (TypeError, KeyError, IndexError, json.JSONDecodeError) as error:
            raise ValueError(f"not a layer layout: {text!r} ({error})") from error

    def describe(self) -> str:
        """One line for logs: the raw shape and what a unit is."""
        shape = ", ".join(str(side) for side in ("N", *self.output_shape()))
        h, w = self.grid
        if self.kind == "conv":
            return f"conv ({shape}): unit = channel, {h} x {w} map"
        if self.kind == "linear":
            return f"linear ({shape}): unit = feature, 1 x 1 map"
        return (
            f"tokens ({shape}): {self.prefix} prefix + {h} x {w} patch tokens, "
            "unit = feature channel"
        )

    def _check(self, array: Any, expected: tuple[int, ...], what: str) -> None:
        """Raise a ValueError when `array` is not (N, *expected)."""
        if tuple(array.shape[1:]) != expected or array.ndim != len(expected) + 1:
            raise ValueError(f"{what} of shape {tuple(array.shape)} does not fit {self.describe()}")


def _contiguous(array: Any) -> Any:
    """A C-contiguous copy where needed (torch tensor or numpy array)."""
    if isinstance(array, np.ndarray):
        return np.ascontiguousarray(array)
    return array.contiguous()


def _concatenate(parts: Sequence[Any]) -> Any:
    """Concatenate token arrays along the token axis (torch tensors or numpy arrays)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=1)
    # A torch tensor: filled by slices, so this module needs no torch (the analysis env has none).
    total = sum(part.shape[1] for part in parts)
    joined = parts[0].new_empty((parts[0].shape[0], total, *parts[0].shape[2:]))
    offset = 0
    for part in parts:
        joined[:, offset : offset + part.shape[1]] = part
        offset += part.shape[1]
    return joined


def infer_layout(output: Any, layer: str, prefix_tokens: int | None = None) -> Layout:
    """The layout of one layer's output from its shape (`prefix_tokens` only for tokens)."""
    shape = getattr(output, "shape", None)
    if shape is None:
        raise ValueError(
            f"layer {layer} returns a {type(output).__name__}, not a tensor; a unit layout needs "
            f"{SUPPORTED_SHAPES}: study a module that returns one tensor"
        )
    shape = tuple(int(side) for side in shape)
    if len(shape) == 4:
        return Layout("conv", shape[1], (shape[2], shape[3]))
    if len(shape) == 2:
        return Layout("linear", shape[1], (1, 1))
    if len(shape) == 3:
        return _token_layout(shape, layer, prefix_tokens)
    raise ValueError(
        f"layer {layer} output has shape {shape}; a unit layout needs {SUPPORTED_SHAPES}: "
        "choose another module path in the config's `layers`"
    )


def _token_layout(shape: tuple[int, ...], layer: str, prefix_tokens: int | None) -> Layout:
    """A tokens layout for (N, L, C): prefix as given, else L minus the largest square."""
    tokens, units = shape[1], shape[2]
    if prefix_tokens is None:
        side = math.isqrt(tokens)
        prefix = tokens - side * side
        if side < 1 or prefix > MAX_INFERRED_PREFIX:
            raise ValueError(
                f"layer {layer} output has shape {shape}: {tokens} tokens are no square grid of "
                f"patch tokens after 0 to {MAX_INFERRED_PREFIX} prefix tokens; set {PREFIX_KEY} "
                "to the number of class/register tokens before the patch tokens"
            )
        return Layout("tokens", units, (side, side), prefix)
    patches = tokens - prefix_tokens
    side = math.isqrt(max(patches, 0))
    if prefix_tokens < 0 or patches < 1 or side * side != patches:
        raise ValueError(
            f"layer {layer} output has shape {shape}: {prefix_tokens} prefix tokens leave "
            f"{patches} patch tokens, which form no square grid; check {PREFIX_KEY}"
        )
    return Layout("tokens", units, (side, side), prefix_tokens)
