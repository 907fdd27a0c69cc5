"""Sending a job's output, progress bars and any traceback to its log file."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path


@contextmanager
def logged_to(path: str | Path) -> Iterator[None]:
    """Redirect stdout and stderr to `path` (line-buffered); write the traceback there on error."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as log, redirect_stdout(log), redirect_stderr(log):
        try:
            yield
        except BaseException:
            traceback.print_exc(file=log)
            raise


def progress_options(description: str) -> dict[str, object]:
    """tqdm settings suited to log files: stderr, a line every few seconds, no dynamic width."""
    return {"desc": description, "file": sys.stderr, "mininterval": 2.0, "ncols": 100}
