"""Same config and seed, same numbers: a second run from scratch equals the first byte for byte.

Neither run pins PYTHONHASHSEED, and the second sets it to `random` even where the caller's
environment pins it, so every job of it hashes strings differently from the first run's: an
output that depended on set or hash order would differ. Both runs are the session's (conftest):
the second goes on in the background at low priority while the other tests run, and this test,
which goes last, waits for it.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from workflow_runs import BackgroundRun

pytestmark = pytest.mark.workflow

#: HDF5 attributes that legitimately differ between runs of the same config (none so far).
VOLATILE_ATTRIBUTES: set[str] = set()


def result_files(root: Path, suffix: str) -> list[Path]:
    """Result files with a suffix, relative to the run directory, logs left out."""
    return sorted(
        path.relative_to(root)
        for path in (root / "results").rglob(f"*{suffix}")
        if "logs" not in path.parts
    )


def hdf5_contents(path: Path) -> dict[str, object]:
    """Every dataset and attribute of an HDF5 file, by name."""
    contents: dict[str, object] = {}
    with h5py.File(path, "r") as handle:

        def visit(name: str, item: object) -> None:
            if isinstance(item, h5py.Dataset):
                contents[name] = item[()]
            for key, value in item.attrs.items():
                if key not in VOLATILE_ATTRIBUTES:
                    contents[f"{name}@{key}"] = value

        visit("/", handle)
        handle.visititems(visit)
    return contents


def test_two_runs_from_scratch_are_identical(tiny_run: Path, tiny_rerun: BackgroundRun) -> None:
    result = tiny_rerun.result()
    assert result.returncode == 0, result.stderr[-3000:]
    rerun = tiny_rerun.workdir
    for suffix in (".csv", ".md", ".png", ".pdf", ".pt", ".js"):
        files = result_files(tiny_run, suffix)
        assert files == result_files(rerun, suffix)
        for relative in files:
            assert (rerun / relative).read_bytes() == (tiny_run / relative).read_bytes(), relative
    page = Path("results/browser/index.html")  # (tiny_run also holds a test's report.html)
    assert (rerun / page).read_bytes() == (tiny_run / page).read_bytes()
    stores = result_files(tiny_run, ".h5")
    assert stores == result_files(rerun, ".h5") and len(stores) > 50
    for relative in stores:
        first, second = hdf5_contents(tiny_run / relative), hdf5_contents(rerun / relative)
        assert first.keys() == second.keys(), relative
        for name, value in first.items():
            other = second[name]
            if isinstance(value, np.ndarray):
                assert value.dtype == other.dtype and value.shape == other.shape, (relative, name)
                assert np.array_equal(value, other, equal_nan=value.dtype.kind == "f"), (
                    relative,
                    name,
                )
            else:
                assert np.all(value == other), (relative, name)
