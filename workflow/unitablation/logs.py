"""Sending a job's output, log records, warnings, progress bars and any traceback to its log."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

LOG = logging.getLogger(__name__)
#: One record a line: when, how serious, which module or script, what.
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Records below this level stay out of job logs.
LEVEL = logging.INFO


@contextmanager
def _records_to(stream: TextIO, level: int) -> Iterator[None]:
    """Route every logger's records (level and up) and warnings.warn to `stream` for the block."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LINE_FORMAT, DATE_FORMAT))
    handler.setLevel(level)
    previous_level = root.level
    previous_showwarning = warnings.showwarning
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        warnings.showwarning = previous_showwarning
        root.setLevel(previous_level)
        root.removeHandler(handler)
        handler.close()


@contextmanager
def logged_to(path: str | Path) -> Iterator[None]:
    """Send stdout, stderr and log records (INFO and up) to `path`; log the traceback on error.

    The file is line-buffered; each record is a line "time LEVEL logger: message". Everything
    installed here (handler, root level, warnings capture) is undone when the block exits.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "w", buffering=1) as log,
        redirect_stdout(log),
        redirect_stderr(log),
        _records_to(log, LEVEL),
    ):
        try:
            yield
        except BaseException:
            LOG.exception("the job failed")
            raise


def progress_options(description: str) -> dict[str, object]:
    """tqdm settings suited to log files: stderr, a line every few seconds, no dynamic width."""
    return {"desc": description, "file": sys.stderr, "mininterval": 2.0, "ncols": 100}
