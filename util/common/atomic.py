"""Atomic file writes: a temporary file beside the target, moved over it with ``os.replace`` once complete.

A crash, a full disk or Ctrl-C mid-write leaves the previous file (or none) in place, never a truncated one.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from util.common.errors import UserError


class AtomicFile:
    """``with AtomicFile(path) as handle: handle.write(...)`` writes ``path`` all at once or not at all.

    The temporary file (``.<name>.<pid>.<random>.tmp`` in the same folder, permissions from the umask) is created
    here, so a folder that cannot be written fails before anything is produced (``OSError``). On leaving the
    ``with`` block normally it is flushed (and fsync'ed if ``durable``) and renamed over ``path``; on any exception
    it is removed and ``path`` is left as it was. ``durable=False`` skips the fsync, for files whose content is
    verified when next used (e.g. by a recorded hash).
    """

    def __init__(self, path: str | Path, durable: bool = True):
        self.path = Path(path)
        self.durable = durable
        self.tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        self.handle: BinaryIO = os.fdopen(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")

    def __enter__(self) -> BinaryIO:
        return self.handle

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        committed = False
        try:
            if kind is None:
                self.handle.flush()
                if self.durable:
                    os.fsync(self.handle.fileno())
            self.handle.close()
            if kind is None:
                os.replace(self.tmp, self.path)
                committed = True
        finally:
            if not committed:
                with contextlib.suppress(OSError):  # the error that got us here is the one to report
                    self.handle.close()
                self.tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :class:`AtomicFile`), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path, durable) as handle:
        handle.write(data)


def write_text_if_changed(path: str | Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless the file already holds exactly it; True if it was written."""
    path = Path(path)
    data = text.encode()
    if path.is_file() and path.read_bytes() == data:
        return False
    write_bytes_atomic(path, data)
    return True


def _cannot_write(path: Path, reason: str, setting: str) -> UserError:
    kept = " (the previous file is intact)" if path.is_file() else ""
    return UserError(f"cannot write {path} ({reason}){kept}; {setting}")


def _reason(path: Path, err: OSError) -> str:
    """Why ``path`` cannot be written: a file where a folder must be, a folder in its place, or the system's reason."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return f"{blocker} is a file, not a directory"
    if path.is_dir():
        return "it is a directory"
    return err.strerror or str(err)


def check_writable(path: str | Path, setting: str) -> Path:
    """Make sure ``path`` can be written before the work that produces it starts: its folder exists (created if
    needed) and takes a new file, and ``path`` is not a directory. Otherwise a one-line :class:`UserError` naming the
    file, the reason and ``setting`` (what to change, e.g. "choose a writable exp_dir")."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(0, "it is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        with AtomicFile(path, durable=False) as handle:
            raise _Probe(handle)
    except _Probe:
        return path
    except OSError as err:
        raise _cannot_write(path, _reason(path, err), setting) from None


class _Probe(Exception):
    """Leaves an :class:`AtomicFile` without committing it (``check_writable``'s trial file)."""


def write_output(path: str | Path, data: bytes, setting: str) -> Path:
    """Write a run's output file (results, a resolved config, a figure) atomically: the whole file or, on any
    failure (a full disk, no permission, a directory in the way), the previous file untouched and a one-line
    :class:`UserError` naming the file, the reason and ``setting``."""
    path = Path(path)
    try:
        write_bytes_atomic(path, data)
    except OSError as err:
        raise _cannot_write(path, _reason(path, err), setting) from None
    return path
