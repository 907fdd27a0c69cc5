"""A job's log gets its log records with their levels, warnings and tracebacks; nothing stays."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest

from unitablation.logs import logged_to

LOG = logging.getLogger("unitablation.scripts.test_logs")
#: "date time LEVEL logger: message", as the handler writes each record.
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<msg>.*)$"
)


def records(path: Path) -> list[tuple[str, str, str]]:
    """(level, logger, message) of every record line of a log, in order."""
    found = []
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if match:
            found.append((match["level"], match["name"], match["msg"]))
    return found


def our_handlers() -> list[logging.Handler]:
    """Root handlers that write to a stream (pytest's own capture handlers excluded)."""
    return [
        handler
        for handler in logging.getLogger().handlers
        if type(handler) is logging.StreamHandler
    ]


def test_info_and_warning_lines_carry_their_levels(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "job.log"
    with logged_to(log):
        LOG.debug("too fine for a job log")
        LOG.info("read %d images", 600)
        LOG.warning("class %s never predicted", "harbor")
        logging.getLogger("unitablation.lease").info("library line")
    assert records(log) == [
        ("INFO", "unitablation.scripts.test_logs", "read 600 images"),
        ("WARNING", "unitablation.scripts.test_logs", "class harbor never predicted"),
        ("INFO", "unitablation.lease", "library line"),
    ]


def test_prints_and_records_share_the_file_in_order(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    with logged_to(log):
        print("printed first")
        LOG.info("logged second")
    lines = log.read_text().splitlines()
    assert lines[0] == "printed first" and lines[1].endswith("logged second")


def test_warnings_warn_ends_up_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with logged_to(log):
            warnings.warn("a layer has no units left", UserWarning, stacklevel=1)
    ((level, name, message),) = records(log)
    assert (level, name) == ("WARNING", "py.warnings")
    assert "UserWarning: a layer has no units left" in message


def test_nothing_is_left_behind_after_the_block(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, warnings.showwarning)
    for run in range(3):  # tests call a script's entry many times in one process
        with logged_to(tmp_path / f"{run}.log"):
            assert len(our_handlers()) == 1
            LOG.info("run %d", run)
    assert (list(root.handlers), root.level, warnings.showwarning) == before
    assert [message for _, _, message in records(tmp_path / "2.log")] == ["run 2"]
    LOG.warning("after the block")
    assert "after the block" not in (tmp_path / "2.log").read_text()


def test_an_exception_s_traceback_is_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "job.log"

    def fail() -> None:
        raise ValueError("layer 'conv9' is not in the model")

    with pytest.raises(ValueError, match="conv9"), logged_to(log):
        fail()
    text = log.read_text()
    assert re.search(r"ERROR unitablation\.logs: the job failed\nTraceback", text), text
    assert "in fail" in text and "ValueError: layer 'conv9' is not in the model" in text
    assert our_handlers() == []
