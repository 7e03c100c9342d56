"""What the terminal shows besides progress bars: lines written above the tqdm bars, and Python warnings as one
line each (``warning: <message>``, no source-code line) on the console and in the log file of the run
(:class:`util.runs.log.RunLog` adds its file to :data:`WARNINGS_LOGGER` and first writes the warnings emitted before
it opened, e.g. while the run was being set up). Every command-line entry point runs inside
:func:`warnings_in_one_line` (through :func:`util.common.errors.cli_entry`).
"""
from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm

WARNINGS_LOGGER = "mianet.warnings"
BACKLOG_SIZE = 100


class TqdmHandler(logging.Handler):
    """A logging handler writing to stderr through ``tqdm.write``, so that progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


class Backlog(logging.Handler):
    """Keeps the first :data:`BACKLOG_SIZE` warnings not yet written to a run log (see :func:`take_backlog`)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < BACKLOG_SIZE:
            self.records.append(record)


def take_backlog() -> list[logging.LogRecord]:
    """The warnings emitted inside :func:`warnings_in_one_line` since it began or since the last call."""
    backlog = next((h for h in logging.getLogger(WARNINGS_LOGGER).handlers if isinstance(h, Backlog)), None)
    if backlog is None:
        return []
    records, backlog.records = backlog.records, []
    return records


def warning_line(message: Warning | str, category: type[Warning]) -> str:
    """``warning: <message on one line>``; the category is named unless it is the plain UserWarning."""
    text = " ".join(str(message).split())
    return f"warning: {text}" if category is UserWarning else f"warning ({category.__name__}): {text}"


@contextmanager
def warnings_in_one_line() -> Iterator[logging.Logger]:
    """Within the block, every Python warning (after the usual filters: once per place) goes to
    :data:`WARNINGS_LOGGER` as :func:`warning_line`: to the console and to the file of any open run log."""
    logger = logging.getLogger(WARNINGS_LOGGER)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    handlers = [TqdmHandler(), Backlog()]
    for handler in handlers:
        logger.addHandler(handler)
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        logger.warning(warning_line(message, category))

    warnings.showwarning = show
    try:
        yield logger
    finally:
        warnings.showwarning = previous
        for handler in handlers:
            logger.removeHandler(handler)
