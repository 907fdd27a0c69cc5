"""Atomic output writing and HDF5 reading errors that name the file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from unitablation.broden import load_mask, save_mask
from unitablation.store import ActivationStore, atomic_paths, open_hdf5, require_datasets


def test_atomic_paths_publish_all_outputs_together(tmp_path: Path) -> None:
    outputs = [tmp_path / "a.csv", tmp_path / "sub" / "b.h5"]
    with atomic_paths(outputs) as temporaries:
        for temporary, text in zip(temporaries, ("x", "y"), strict=True):
            temporary.write_text(text)
        assert not any(path.exists() for path in outputs)
    assert [path.read_text() for path in outputs] == ["x", "y"]
    assert sorted(p.name for p in tmp_path.rglob("*.partial")) == []


def test_atomic_paths_leave_nothing_when_the_block_fails(tmp_path: Path) -> None:
    outputs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    with pytest.raises(RuntimeError), atomic_paths(outputs) as temporaries:
        temporaries[0].write_text("finished table")
        raise RuntimeError("second output could not be computed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_truncated_hdf5_is_named(tmp_path: Path) -> None:
    path = tmp_path / "store.h5"
    with h5py.File(path, "w") as handle:
        handle["values"] = np.arange(10_000, dtype=np.float64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cannot open activation store {path}"):
        ActivationStore(path)
    with pytest.raises(ValueError, match=rf"cannot open ablation shard {path}"):
        open_hdf5(path, "ablation shard")


def test_missing_layer_dataset_is_named(tmp_path: Path) -> None:
    path = tmp_path / "store.h5"
    with h5py.File(path, "w") as handle:
        handle["labels"] = np.zeros(3, np.int64)
        handle["logits"] = np.zeros((3, 2), np.float32)
        handle.attrs["layers"] = '["conv"]'
        handle["layers/conv/max"] = np.zeros((3, 4), np.float32)
    with ActivationStore(path) as store, pytest.raises(ValueError) as error:
        store.layer("conv")
    assert str(path) in str(error.value) and "mean" in str(error.value)
    with h5py.File(path, "r") as handle:
        require_datasets(handle, ["labels", "logits"], path)
        with pytest.raises(ValueError, match="'other'"):
            require_datasets(handle, ["labels", "other"], path)


def test_truncated_and_garbage_masks_are_named(tmp_path: Path) -> None:
    mask = tmp_path / "mask.png"
    save_mask(mask, np.arange(64 * 64, dtype=np.int64).reshape(64, 64) % 300)
    data = mask.read_bytes()
    mask.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{mask}: cannot read mask PNG"):
        load_mask(mask)
    mask.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=rf"{mask}: cannot read mask PNG"):
        load_mask(mask)
