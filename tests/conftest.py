"""Fixtures shared across test folders. Builders of on-disk data in the real formats live in ``tests/support/``."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.engine import make_tiny_synth


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> tuple[Path, Path]:
    """The default tiny synth dataset and its lists, ``(data_root, list_root)``, built once per session. Read only:
    a test that writes into a data root makes its own."""
    return make_tiny_synth(tmp_path_factory.mktemp("tiny_synth"))
