"""Time ``make_synth`` (target: ~3000 images in < 60 s on 2 cores) and ``make_lists`` on its output.

    python -m bench.synth [--num-train 2400 --num-val 600 --workers 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tools.make_lists import make_lists
from tools.make_synth import make_synth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-train", type=int, default=2400)
    parser.add_argument("--num-val", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "synth"
        start = time.perf_counter()
        make_synth(root, args.num_train, args.num_val, seed=0, workers=args.workers)
        elapsed = time.perf_counter() - start
        total = args.num_train + args.num_val
        print(f"make_synth: {total} images with {args.workers} workers in {elapsed:.1f} s "
              f"({1000 * elapsed / total:.2f} ms/image; target ~3000 in < 60 s)")
        start = time.perf_counter()
        make_synth(root, args.num_train, args.num_val, seed=0, workers=args.workers)
        print(f"make_synth again on complete output (no-op): {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        make_lists("synth", root, Path(folder) / "lists", workers=args.workers)
        print(f"make_lists on synth: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
