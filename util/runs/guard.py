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
- Stop: SIGINT/SIGTERM/SIGHUP ask the training loop to save ``last.pth`` at the current iteration and stop, on every
  rank at the same iteration.

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

from util.common.errors import STOP_SIGNALS, UserError
from util.common.distributed import DistContext, MaxVote, all_reduce_sum, is_distributed
from util.runs.checkpoint import (
    BEST,
    IMPORTED,
    LAST,
    RUN_DIR_KEYS,
    RUN_IDENTITY_KEYS,
    STAGE_NAMES,
    TRAINING_STATE_KEYS,
    identity_conflict,
    read_checkpoint_file,
    run_identity,
    run_record,
    warn_unchecked,
)
from util.runs.folders import base_run_dir, finished_checkpoint, resume_path

LOCK_FILE = "run.lock"


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


RESUME_MAY_CHANGE = (
    "workers", "device", "data_root", "list_root", "exp_dir", "base_exp_dir", "base_weight", "resume", "overwrite",
    "checkpoint_interval", "print_freq", "weight", "test_seeds", "test_episodes", "test_batch_size", "vis",
    "feature_reuse", "encode_batch",
)
"""Config keys a resumed run may change: where things are (the base learner is checked by the identity), how the
work is spread and reported, and test-time settings that change no training step or validation score. Every other
key defines the model, the data or the optimisation of the stage, and a run can continue only with its recorded
value."""
IGNORED_BY_STAGE = {
    "base": ("shot", "ann_type", "train_size", "val_size", "scale_min", "scale_max", "episode_class", "embedding_file",
             "use_gim", "use_hpm", "prior_scale", "freeze_backbone_bn", "reduce_dim", "zoom_factor", "triplet_margin",
             "aux_weight", "epochs", "batch_size", "base_lr", "train_episodes", "val_episodes", "ori_resize"),
    "meta": ("base_images", "base_train_size", "base_val_size", "base_val_images", "base_scale_min", "base_scale_max",
             "base_epochs", "base_batch_size", "base_learner_lr", "base_head_lr_mult", "base_stop_patience",
             "pretrained_backbone", "backbone_weight"),
}
"""Keys a stage does not read, so a resumed run of it may change them: stage 1 (``base``) ignores stage 2's keys,
stage 2 (``meta``) stage 1's (it meets the base learner through its checkpoint and identity)."""


def _resume_keys(stage: str, cfg: Mapping[str, Any]) -> list[str]:
    """The keys of ``cfg`` a run of ``stage`` can only continue with unchanged."""
    other = set(IGNORED_BY_STAGE.get(stage, ()))
    if stage == "base" and cfg.get("base_images") != "fold_lists":  # stage 1 reads the lists' rules only with fold_lists
        other |= {"min_class_pixels", "novel_in_train"}
    return [key for key in cfg if key not in RESUME_MAY_CHANGE and key not in other]


def _resume_conflict(source: Path, stage: str, cfg: Mapping[str, Any], records: Mapping[str, Any]) -> str | None:
    """How ``cfg`` and ``records`` (:attr:`util.engine.loop.TrainJob.record`) differ from what the checkpoint ``source``
    was trained with, as text; None if the run can continue under them."""
    state = read_checkpoint_file(source, mmap=True)
    recorded = state.get("config") if isinstance(state, dict) else None
    if not isinstance(recorded, dict) or any(key not in state for key in TRAINING_STATE_KEYS):
        return None  # not a run to continue: util.engine.loop says so
    differing = [f"{key} {recorded[key]!r} (now {cfg[key]!r})" for key in _resume_keys(stage, cfg)
                 if key in recorded and recorded[key] != cfg[key]]
    differing += [f"{key} {state[key]!r} (now {value!r})" for key, value in records.items()
                  if key in state and state[key] != value]
    return ", ".join(differing) or None


def plan_start(cfg: Mapping[str, Any], stage: str, run_dir: Path, identity: Mapping[str, Any],
               records: Mapping[str, Any] | None = None) -> StartPoint:
    """Decide how a run of ``stage`` in ``run_dir`` starts under ``cfg.resume``, or refuse in one line if it
    would replace a checkpoint another run wrote (unless ``cfg.overwrite``), continue or skip as finished
    a run whose identity (:func:`util.runs.checkpoint.run_identity`) differs from ``identity``, or continue a run under
    other values of the keys that define its model, data or optimisation (all but :data:`RESUME_MAY_CHANGE` and
    :data:`IGNORED_BY_STAGE`) or other ``records`` (e.g. the class vectors it was trained with); with
    ``resume auto overwrite true`` a run of another identity is replaced by a fresh start. Reads only: nothing is
    written before this has decided."""
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
    if source is not None:
        changed = _resume_conflict(source, stage, cfg, records or {})
        if changed is not None:
            raise UserError(f"{source} is a run trained with {changed}, which it cannot continue under: continuing "
                            f"needs the values it was trained with; run it with those, or start over with resume null "
                            f"overwrite true (or another {dir_key})")
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


class StopNow(BaseException):
    """Raised by :class:`StopRequest`'s handler inside :meth:`StopRequest.interruptible`: leave that phase now."""


class StopRequest:
    """Within ``with StopRequest() as stop:``, SIGINT, SIGTERM and SIGHUP — any number of them, on any rank — ask
    the run to stop instead of killing the process: the training loop asks :meth:`poll` after every step and
    :meth:`agreed` at every epoch's end, both of which every rank calls at the same iterations, so all ranks stop at
    one iteration and save it once. Inside :meth:`interruptible` (validation, once ``last.pth`` holds the
    iteration) a signal raises :class:`StopNow` at once. Outside the ``with`` block the previous handlers apply."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._vote: MaxVote | None = None
        self._interruptible = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
        if self._interruptible:
            self._interruptible = False
            raise StopNow(signum)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self._vote is not None:
            self._vote.result()  # finish the collective every rank started
            self._vote = None

    def poll(self) -> int | None:
        """The stop signal all ranks agreed on at the previous poll (None: go on), and this rank's vote for the next:
        the vote runs while the next step computes, so polling never waits on the other ranks."""
        if not is_distributed():
            return self.signal
        previous, self._vote = self._vote, MaxVote(self.signal or 0)
        return (previous.result() or None) if previous is not None else None

    def agreed(self) -> int | None:
        """The stop signal of any rank, agreed now (every rank waits for the others)."""
        if not is_distributed():
            return self.signal
        if self._vote is not None:
            self._vote.result()
        self._vote = None
        return MaxVote(self.signal or 0).result() or None

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A phase that a signal ends at once (:class:`StopNow`); one already received ends it before it starts."""
        if self.signal is not None:
            raise StopNow(self.signal)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


def worker_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker ignores SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C or a scheduler
    signals every process of the job). The main process decides when to stop; it ends its workers itself."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


# ---------------------------------------------------------------- command line (train.sh)
