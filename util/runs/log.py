"""Per-run logging: a log file in the run directory, console lines that do not break tqdm bars, tensorboardX scalars.

Only the main rank writes; on other ranks every method is a no-op. While a log is open, Python warnings
(one line each, :mod:`util.common.console`) are written to its file as well.
"""
from __future__ import annotations

import logging
from pathlib import Path

from tensorboardX import SummaryWriter

from util.common.console import WARNINGS_LOGGER, TqdmHandler, take_backlog


class RunLog:
    """``<run_dir>/<name>.log`` + console; ``scalars`` go to ``<run_dir>/tb`` when ``tensorboard`` is true."""

    def __init__(self, run_dir: Path, name: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / f"{name}.log"
        self.logger = logging.getLogger(f"mianet.{name}.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.file_handler = logging.FileHandler(self.path)
        self.file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        console = TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        self.logger.addHandler(self.file_handler)
        self.logger.addHandler(console)
        for record in take_backlog():  # warnings of this process from before the log opened
            self.file_handler.handle(record)
        logging.getLogger(WARNINGS_LOGGER).addHandler(self.file_handler)
        if tensorboard:
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def info(self, message: str) -> None:
        if self.enabled:
            self.logger.info(message)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
        logging.getLogger(WARNINGS_LOGGER).removeHandler(self.file_handler)
        take_backlog()  # this log holds them
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
