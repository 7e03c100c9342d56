"""Print the checkpoint that makes stage 1 done for a config, nothing if stage 1 still has to run
(:func:`util.runs.guard.stage1_done`); train.sh uses it to skip stage 1.

    python -m tools.runguard --stage1-done --config C [key value ...]
"""
from __future__ import annotations

import argparse
from typing import Sequence

from util.common.config import load_config
from util.common.errors import cli_entry
from util.runs.guard import stage1_done


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the checkpoint that makes stage 1 done for a config "
                                                 "(nothing if stage 1 still has to run).")
    parser.add_argument("--stage1-done", action="store_true", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*", help="key value pairs overriding the config")
    args = parser.parse_args(argv)
    done = stage1_done(load_config(args.config, args.overrides))
    if done is not None:
        print(done)


if __name__ == "__main__":
    main()
