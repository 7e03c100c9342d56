"""Generate ``synth``: a small few-shot segmentation dataset in the PASCAL layout, no download needed
(what it holds: :mod:`util.make_synth`).

    python -m tools.make_synth --root data/synth [--num-train 2400 --num-val 600 --seed 0 --workers 2]
"""
from __future__ import annotations

import argparse
import time

from util.errors import cli_entry
from util.make_synth import make_synth


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/synth", help="output folder (default data/synth)")
    parser.add_argument("--num-train", type=int, default=2400)
    parser.add_argument("--num-val", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 8)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    made = make_synth(args.root, args.num_train, args.num_val, args.seed, args.workers)
    if made:
        print(f"synth: wrote {args.num_train} train + {args.num_val} val images to {args.root} "
              f"in {time.perf_counter() - start:.1f} s")
    else:
        print(f"synth: {args.root} is already complete; nothing to do")


if __name__ == "__main__":
    main()
