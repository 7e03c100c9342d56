"""Command lines: the entry points' ``--config FILE`` followed by ``key value`` overrides, and the one spelling of
a ``tools/`` command that hints and error messages print."""
from __future__ import annotations

import argparse
import shlex
from typing import Sequence

from util.common.config import Config, load_config


def config_from_cli(argv: Sequence[str] | None, description: str) -> Config:
    """Parse ``[--config FILE] [key value ...]`` and return the resolved config."""
    parser = argparse.ArgumentParser(description=description,
                                     epilog="keys and defaults: config/base.yaml; e.g. --config "
                                            "config/synth/efficientnet_lite0/split0.yaml shot 5 device cpu")
    parser.add_argument("--config", default=None, help="YAML config (inherits through _base_)")
    parser.add_argument("overrides", nargs="*", help="key value pairs overriding the config")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides)


def tool_command(tool: str, **options: object) -> str:
    """The shell command that runs ``tools/<tool>.py`` with ``--option value`` pairs (``_`` in a name becomes ``-``;
    values quoted for the shell where they need it), e.g. ``tool_command("make_synth", root="my data")`` ->
    ``python -m tools.make_synth --root 'my data'``."""
    return " ".join(["python", "-m", f"tools.{tool}",
                     *(f"--{name.replace('_', '-')} {shlex.quote(str(value))}" for name, value in options.items())])
