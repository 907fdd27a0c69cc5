"""HDF5 activation store layout, atomic writing and streaming reads (no torch needed)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import h5py
import numpy as np

from .layouts import Layout

#: Bump when the layout of the store changes; readers check it. Format 2 adds each layer's
#: `layout` attribute and, for token layers with prefix tokens, their `prefix` dataset.
STORE_FORMAT = 2


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path that is renamed onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.partial")
    temporary.unlink(missing_ok=True)
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary siblings for several outputs; all are renamed into place only if the block
    succeeds, so a failed job leaves none of them (not one finished table beside a missing one)."""
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_path(path)) for path in paths]


#: Datasets every layer group of a store holds (maps only where the layer keeps them).
LAYER_DATASETS = ("mean", "max")


def open_hdf5(path: str | Path, kind: str) -> h5py.File:
    """Open an HDF5 file for reading; a ValueError naming the file and its `kind` if unreadable."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"cannot open {kind} {path}: {error}") from error


def require_datasets(group: h5py.Group, names: Sequence[str], path: str | Path) -> None:
    """Raise a ValueError naming the file and group if any of `names` is missing from it."""
    missing = [name for name in names if name not in group]
    if missing:
        raise ValueError(f"{path}: group {group.name!r} has no dataset(s) {missing}")


class ActivationStore:
    """Read access to an activation HDF5 file; arrays are read lazily or in batches."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = open_hdf5(self.path, "activation store")
        for name in ("labels", "logits", "layers"):
            if name not in self.file:
                self.file.close()
                raise ValueError(f"activation store {self.path} has no dataset {name!r}")

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying file."""
        self.file.close()

    @property
    def layers(self) -> list[str]:
        """Layer names stored, in config order."""
        return json.loads(self.file.attrs["layers"])

    @property
    def classes(self) -> list[str]:
        """Class names, index order."""
        return json.loads(self.file.attrs["classes"])

    def __len__(self) -> int:
        return int(self.file["labels"].shape[0])

    def labels(self) -> np.ndarray:
        """True class index per image (-1 where an image set has no classes)."""
        return self.file["labels"][:]

    def logits(self) -> np.ndarray:
        """Network output (N, K) as float32."""
        return self.file["logits"][:]

    def layer(self, name: str) -> h5py.Group:
        """The HDF5 group of one layer, checked to hold mean, max (and, if stored, maps)."""
        if name not in self.file["layers"]:
            raise ValueError(
                f"activation store {self.path} has no layer {name!r}; "
                f"it holds {', '.join(self.layers)}"
            )
        group = self.file["layers"][name]
        require_datasets(group, LAYER_DATASETS, self.path)
        return group

    def iter_maps(self, name: str, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (offset, maps as float32) batches of one layer without loading them all."""
        group = self.layer(name)
        if "maps" not in group:
            raise ValueError(f"activation store {self.path} holds no maps for layer {name!r}")
        maps = group["maps"]
        for start in range(0, maps.shape[0], batch_size):
            yield start, maps[start : start + batch_size].astype(np.float32)

    def layout(self, name: str) -> Layout:
        """The layer's layout: its `layout` attribute, or a conv layout from `shape` (format 1)."""
        group = self.layer(name)
        if "layout" in group.attrs:
            return Layout.from_json(group.attrs["layout"])
        if "shape" in group.attrs:
            channels, height, width = (int(side) for side in group.attrs["shape"])
            return Layout("conv", channels, (height, width))
        raise ValueError(f"activation store {self.path}: layer {name!r} records no layout")

    def iter_outputs(self, name: str, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (offset, raw layer outputs as float32): what the layer returned, rebuilt from
        its maps (and prefix tokens) by its layout, e.g. (N, C) for a linear layer."""
        layout, group = self.layout(name), self.layer(name)
        if layout.prefix and "prefix" not in group:
            raise ValueError(f"activation store {self.path}: layer {name!r} has no prefix tokens")
        prefix = group["prefix"] if layout.prefix else None
        for start, maps in self.iter_maps(name, batch_size):
            head = None if prefix is None else prefix[start : start + len(maps)].astype(np.float32)
            yield start, layout.from_maps(maps, head)
