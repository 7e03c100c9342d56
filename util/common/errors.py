"""User-facing errors: one actionable line, no traceback, non-zero exit code (and warnings in one line each)."""
from __future__ import annotations

import atexit
import functools
import gc
import multiprocessing
import re
import signal
import sys
import threading
from types import FrameType
from typing import Callable, Sequence, TypeVar

from util.common.console import warnings_in_one_line

T = TypeVar("T")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for Ctrl-C
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a command: a training loop saves ``last.pth`` first (util.runs.guard)."""

_WORKER_PREAMBLE = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class UserError(Exception):
    """An error caused by the user's input (data, config, paths); the message says what to do.

    ``exit_code`` is what the entry point exits with (2; an interrupted run uses 128 + the signal).

    A UserError raised inside a DataLoader worker is re-raised by torch in the main process as the same
    class built from the worker's whole traceback; the message is then cut back to the original line.
    """

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str):
        super().__init__(_original_line(message, type(self)))


def first_few(items: Sequence[str], shown: int = 3) -> str:
    """``a, b, c and 5 more``: the first ``shown`` of ``items`` and how many are left out (for one-line messages)."""
    head = ", ".join(items[:shown])
    return f"{head} and {len(items) - shown} more" if len(items) > shown else head


def _original_line(message: str, kind: type) -> str:
    """``message``, or the worker's own message if it is torch's "Caught X in DataLoader worker" wrapper."""
    if not isinstance(message, str) or not _WORKER_PREAMBLE.match(message):
        return message
    last = message.rstrip().splitlines()[-1]
    match = re.match(rf"(?:[\w.]+\.)?{re.escape(kind.__qualname__)}: (.*)", last)
    return match.group(1) if match else message


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP outside a training loop (which saves and stops on its own, ``util.runs.guard``); a
    KeyboardInterrupt, so code that cleans up after Ctrl-C does so after any of them. ``args[0]`` is the signal."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    for other in STOP_SIGNALS:  # the first signal ends the command; more of them (a shell passing one on) change nothing
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command-line ``main``: a :class:`UserError` prints ``error: <message>`` and exits with its
    ``exit_code`` (2); SIGINT (Ctrl-C), SIGTERM or SIGHUP outside a training loop print ``error: interrupted (by
    SIGTERM)`` and exit with 128 + the signal (a signal the process was started ignoring included: a shell's
    background job gets its signals passed on by train.sh/test.sh); Python warnings are one line each
    (:func:`util.common.console.warnings_in_one_line`)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        main_thread = threading.current_thread() is threading.main_thread()
        _end_worker_processes_at_exit()
        previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS} if main_thread else {}
        try:
            with warnings_in_one_line():
                return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            exit_code = _EXIT_STATE.code = err.exit_code
        except KeyboardInterrupt as err:
            signum = err.args[0] if isinstance(err, Interrupted) else signal.SIGINT
            name = signal.Signals(signum).name
            print("error: interrupted" + ("" if signum == signal.SIGINT else f" (by {name})"), file=sys.stderr)
            exit_code = _EXIT_STATE.code = 128 + signum
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        sys.exit(exit_code)  # outside the except clause: the traceback, and the loaders its frames held, can go

    return wrapper


class _ExitState:
    """Whether the command failed (``code``: its exit code) and whether the exit hook is registered."""

    code: int | None = None
    hooked = False


_EXIT_STATE = _ExitState()


def _end_worker_processes_at_exit() -> None:
    """Register :func:`end_worker_processes` once; registered after multiprocessing's own exit hook, it runs first."""
    if not _EXIT_STATE.hooked:
        atexit.register(end_worker_processes)
        _EXIT_STATE.hooked = True


def end_worker_processes() -> None:
    """End the worker processes an error left behind, before the interpreter's exit waits for them.

    DataLoader workers ignore stop signals (:func:`util.runs.guard.worker_signals`), and after a worker raised,
    torch's shutdown does not reach them (it falls back to SIGTERM): the exit would wait forever. The last uncaught
    exception is dropped and its frames collected first, so the loaders they held shut down as torch does it. A
    command that succeeded is left to torch's own exit."""
    if _EXIT_STATE.code is None and getattr(sys, "last_value", None) is None:
        return
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    gc.collect()
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()
