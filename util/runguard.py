"""What keeps a training run from destroying what the user has: the overwrite rule, finished stages, the
run-directory lock, and a clean stop on SIGINT/SIGTERM.

- Overwrite rule: a run never replaces a ``last.pth``/``best.pth`` that another run (or the importer)
  wrote, unless ``overwrite true``; checkpoints carry the ``run_id`` of the run that wrote them.
- Finished stages: with ``resume auto`` a finished (or imported) stage is a no-op, whatever else changed
  (process count, batch size, workers...), provided it was trained with the config's identity (dataset, fold,
  COCO split style, classes, ``novel_in_train``, ``base_images``, backbone, shot: ``run_identity``); a
  checkpoint of another identity is neither skipped nor continued, the run refuses in one line.
- Lock: ``<run dir>/run.lock`` holds the pid and host of the run using the directory; a second run
  refuses, a lock left by a dead process on this host is taken over.
- Stop: SIGINT/SIGTERM ask the training loop to save ``last.pth`` after the current iteration and stop.

:func:`stage1_done` is the checkpoint that makes stage 1 done for a config; train.sh asks it through
``python -m tools.runguard --stage1-done`` to skip stage 1.
"""
from __future__ import annotations

import errno
import fcntl
import math
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Iterator, Mapping

import torch

from util.checkpoint import (BEST, IMPORTED, LAST, RUN_DIR_KEYS, RUN_IDENTITY_KEYS, STAGE_NAMES, base_run_dir,
                             finished_checkpoint, identity_conflict, resume_path, run_identity, run_record,
                             warn_unchecked)
from util.distributed import DistContext, all_reduce_sum
from util.errors import UserError

LOCK_FILE = "run.lock"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(UserError):
    """SIGINT/SIGTERM stopped training after ``last.pth`` was saved; exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# ---------------------------------------------------------------- overwrite rule and finished stages


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: ``finished`` (a finished stage, nothing to do), else ``source`` (a checkpoint to
    resume from, or None for a fresh start) and the ``run_id`` every checkpoint it writes carries."""

    source: Path | None
    run_id: str | None
    finished: Path | None = None


def _describe(record: Mapping[str, Any]) -> str:
    if record.get("stage") == IMPORTED:
        return f"an imported checkpoint (from {record.get('source')})"
    stage = STAGE_NAMES.get(record.get("stage"), f"stage {record.get('stage')!r}")
    status = "finished" if record.get("finished") else f"at iteration {record.get('iteration')}"
    miou = (record.get("best") or {}).get("miou")
    score = f", best mIoU {miou:.4f}" if isinstance(miou, float) and math.isfinite(miou) else ""
    return f"another {stage} run ({status}{score})"


def _identity_conflict(path: Path, identity: Mapping[str, Any]) -> str | None:
    """How the checkpoint at ``path`` differs from ``identity`` (None if it agrees), warning about what it does not
    record."""
    conflict, unknown = identity_conflict(run_record(path)["identity"], identity, RUN_IDENTITY_KEYS)
    warn_unchecked(path, unknown)
    return conflict


def plan_start(cfg: Mapping[str, Any], stage: str, run_dir: Path, identity: Mapping[str, Any]) -> StartPoint:
    """Decide how a run of ``stage`` in ``run_dir`` starts under ``cfg.resume``, or refuse in one line if it
    would replace a checkpoint another run wrote (unless ``cfg.overwrite``), or continue or skip as finished
    a run whose identity (:func:`util.checkpoint.run_identity`) differs from ``identity``; with
    ``resume auto overwrite true`` such a run is replaced by a fresh start."""
    dir_key = RUN_DIR_KEYS.get(stage, "exp_dir")
    replace = cfg["resume"] == "auto" and cfg["overwrite"]
    if cfg["resume"] == "auto":
        done = finished_checkpoint(run_dir)
        if done is not None:
            conflict = _identity_conflict(done, identity)
            if conflict is None:
                return StartPoint(None, None, finished=done)
            if not replace:
                raise UserError(f"{done} holds {_describe(run_record(done))} trained with {conflict}; choose another "
                                f"{dir_key}, or replace it with overwrite true")
    source = resume_path(cfg["resume"], run_dir)
    if source is not None:
        conflict = _identity_conflict(source, identity)
        if conflict is not None and not replace:
            raise UserError(f"{source} holds {_describe(run_record(source))} trained with {conflict}, which this run "
                            f"cannot continue; choose another {dir_key}, or start over with resume null overwrite true")
        if conflict is not None:
            source = None
    run_id = run_record(source).get("run_id") if source is not None else uuid.uuid4().hex
    if cfg["overwrite"]:
        return StartPoint(source, run_id)
    for name in (BEST, LAST):
        path = run_dir / name
        if not path.is_file() or (source is not None and path.resolve() == source.resolve()):
            continue
        record = run_record(path)
        if record.get("run_id") != run_id:
            keep = [] if cfg["resume"] == "auto" else ["keep it with resume auto"]
            choices = keep + ["replace it with overwrite true", f"choose another {dir_key}"]
            raise UserError(f"{path} holds {_describe(record)}, which this run would replace; "
                            f"{', '.join(choices[:-1])} or {choices[-1]}")
    return StartPoint(source, run_id)


def stage1_done(cfg: Mapping[str, Any]) -> Path | None:
    """With ``resume auto``: ``base_weight`` if it is set and exists, else the finished or imported checkpoint of
    the stage-1 run directory if it was trained with this config's identity; None when stage 1 still has to run
    (train_base.py then explains a difference)."""
    if cfg["resume"] != "auto":
        return None
    if cfg["base_weight"]:
        return Path(cfg["base_weight"]) if Path(cfg["base_weight"]).is_file() else None
    done = finished_checkpoint(base_run_dir(cfg))
    if done is None:
        return None
    conflict, _ = identity_conflict(run_record(done)["identity"], run_identity(cfg, "base"), RUN_IDENTITY_KEYS)
    return done if conflict is None else None


def skip_message(stage: str, done: Path) -> str:
    """The line a finished stage prints instead of training."""
    return (f"{STAGE_NAMES.get(stage, stage)} done ({done}), skipping; to train it again: resume null overwrite true, "
            f"or another {RUN_DIR_KEYS.get(stage, 'exp_dir')}")


# ---------------------------------------------------------------- the run-directory lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(text: str) -> dict[str, str]:
    """``pid 12 host a started 2026-01-01T10:00:00`` -> {"pid": "12", "host": "a", "started": ...}."""
    words = text.split()
    return dict(zip(words[::2], words[1::2]))


class RunLock:
    """An exclusive claim on a run directory: ``run.lock`` with this process's pid and host.

    The file is held with ``flock`` (released by the kernel if the process dies) and its text names the
    holder. A lock another live process holds, or one written on another host, is refused in one line; a
    lock left by a process of this host that no longer runs is taken over (``taken_over`` says so).
    """

    def __init__(self, run_dir: Path, dir_key: str = "exp_dir"):
        self.path = Path(run_dir) / LOCK_FILE
        self.dir_key = dir_key
        self.fd: int | None = None
        self.taken_over: str | None = None

    def _refuse(self, holder: Mapping[str, str]) -> UserError:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (started {holder.get('started', '?')})"
        return UserError(f"run directory {self.path.parent} is in use by {who}; wait for that run to end, choose "
                         f"another {self.dir_key}, or, if it is no longer running, delete {self.path}")

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UserError(f"cannot use run directory {self.path.parent} ({err.strerror}); "
                            f"choose a writable {self.dir_key}") from None

    def _read_holder(self) -> dict[str, str]:
        try:
            return _holder(self.path.read_text())
        except OSError:
            return {}

    def acquire(self) -> None:
        host = socket.gethostname()
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise self._refuse(self._read_holder()) from None
                locked = False  # no flock on this file system: the pid check below decides
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the previous holder removed the file between our open and flock
                os.close(fd)
                continue
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            if holder.get("pid"):
                if holder.get("host") != host or (not locked and _pid_alive(int(holder["pid"]))):
                    os.close(fd)
                    raise self._refuse(holder)
                self.taken_over = (f"took over {self.path}, left by pid {holder['pid']} on {host}, "
                                   "which is no longer running")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} host {host} started {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def run_dir_lock(run_dir: Path, ctx: DistContext, dir_key: str) -> Iterator[RunLock | None]:
    """Hold the lock of ``run_dir`` on the main rank for the duration; every rank fails if it cannot."""
    lock = RunLock(run_dir, dir_key) if ctx.is_main else None
    failure: UserError | None = None
    if lock is not None:
        try:
            lock.acquire()
        except UserError as err:
            failure = err
    if int(all_reduce_sum(torch.tensor([failure is not None], dtype=torch.int64))):
        raise failure or UserError(f"run directory {run_dir} is in use by another run (see rank 0)")
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


# ---------------------------------------------------------------- stopping on SIGINT / SIGTERM


class StopRequest:
    """Within ``with StopRequest() as stop:``, SIGINT/SIGTERM set ``stop.signal`` instead of killing the
    process; the loop checks it between steps. The handler is then removed, so a second Ctrl-C stops at
    once (KeyboardInterrupt). A SIGINT ignored at start (a background job of a shell) stays ignored."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        signal.signal(signum, self._previous.pop(signum))

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN:
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def agreed(self) -> int | None:
        """The signal that asked to stop, on this rank or any other (so every rank stops at one iteration)."""
        if int(all_reduce_sum(torch.tensor([self.signal or 0], dtype=torch.int64))):
            return self.signal or signal.SIGTERM
        return None


def worker_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C (SIGINT to the whole process group) is left to the main process,
    which stops between steps; SIGTERM ends a worker quietly (exit code 0, so torch does not interrupt the
    main process mid-step), and still ends it when the main process shuts its workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # KeyboardInterrupt: torch's worker loop exits cleanly


# ---------------------------------------------------------------- command line (train.sh)
