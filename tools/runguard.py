"""What train.sh and test.sh ask before they run a stage: the folds a ``<fold|all>`` argument means for a benchmark,
and the checkpoint that makes stage 1 done for a config (nothing if stage 1 still has to run;
:func:`util.runs.guard.stage1_done`).

    python -m tools.runguard --folds pascal all                   # 0 1 2 3 (FSS-1000: 0)
    python -m tools.runguard --stage1-done --config C [key value ...]
"""
from __future__ import annotations

import argparse
from typing import Sequence

from util.common.config import load_config
from util.common.errors import UserError, cli_entry
from util.data.registry import benchmark
from util.runs.guard import stage1_done


def folds(dataset: str, fold: str) -> list[int]:
    """The folds ``fold`` (a number or ``all``) means for ``dataset``; UserError for one it does not have."""
    known = benchmark(dataset)
    if fold == "all":
        return list(range(known.folds))
    if not fold.isdigit() or not int(fold) < known.folds:
        allowed = "0" if known.folds == 1 else f"0-{known.folds - 1}"
        raise UserError(f"fold '{fold}' of {known.title or dataset}: use {allowed} or all")
    return [int(fold)]


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--stage1-done", action="store_true")
    action.add_argument("--folds", nargs=2, metavar=("DATASET", "FOLD"), help="print the folds FOLD (or all) means")
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*", help="key value pairs overriding the config")
    args = parser.parse_args(argv)
    if args.folds:
        print(" ".join(map(str, folds(*args.folds))))
        return
    done = stage1_done(load_config(args.config, args.overrides))
    if done is not None:
        print(done)


if __name__ == "__main__":
    main()
