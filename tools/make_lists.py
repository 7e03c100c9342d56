"""Write the per-fold few-shot lists of a dataset (how: :mod:`util.make_lists`; layout and format:
:mod:`util.fss_lists`).

    python -m tools.make_lists --dataset synth --data-root data/synth [--list-root lists] [--min-class-pixels 2048]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from util.errors import cli_entry
from util.make_lists import make_lists


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="pascal | coco | synth")
    parser.add_argument("--data-root", required=True, help="the prepared dataset (config key data_root)")
    parser.add_argument("--list-root", default="lists", help="output root (config key list_root, default lists)")
    parser.add_argument("--min-class-pixels", type=int, default=2048, help="config key min_class_pixels")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 8)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    written = make_lists(args.dataset, args.data_root, args.list_root, args.min_class_pixels, args.workers)
    print(f"make_lists: wrote {len(written)} lists under {Path(args.list_root) / args.dataset} "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
