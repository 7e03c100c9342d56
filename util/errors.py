"""User-facing errors: one actionable line, no traceback, non-zero exit code."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the user's input (data, config, paths); the message says what to do."""


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command-line ``main`` so a :class:`UserError` prints ``error: <message>`` and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
