"""HDF5 files of ablation counts: one per shard of units, merged per (model, layer, basis)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .counts import AblationCounts
from .store import atomic_path, open_hdf5, require_datasets

COUNT_FIELDS = (
    "units",
    "correct",
    "prob_sum",
    "near_ties",
    "lost",
    "baseline_correct",
    "baseline_prob_sum",
    "baseline_predictions",
    "class_sizes",
)


def save_counts(path: str | Path, counts: AblationCounts, attrs: Mapping[str, Any]) -> None:
    """Write one shard's counts atomically, with provenance attributes."""
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
        for name in COUNT_FIELDS:
            handle.create_dataset(name, data=getattr(counts, name))
        handle.attrs["method"] = counts.method
        for key, value in attrs.items():
            handle.attrs[key] = value


def load_counts(paths: Sequence[str | Path]) -> tuple[AblationCounts, dict[str, Any]]:
    """Read and stack shard files (same images, disjoint units); return counts and first attrs."""
    merged: AblationCounts | None = None
    attrs: dict[str, Any] = {}
    for path in paths:
        with open_hdf5(path, "ablation shard") as handle:
            require_datasets(handle, COUNT_FIELDS, path)
            counts = AblationCounts(
                **{name: handle[name][:] for name in COUNT_FIELDS},
                method=str(handle.attrs["method"]),
            )
            attrs = attrs or dict(handle.attrs)
        merged = counts if merged is None else merged.merge(counts)
    if merged is None:
        raise ValueError("no ablation shards to merge")
    if not np.array_equal(np.sort(merged.units), np.arange(len(merged.units))):
        raise ValueError("ablation shards do not cover units 0..U-1 exactly once")
    return merged, attrs
