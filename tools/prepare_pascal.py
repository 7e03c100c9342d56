"""Build PASCAL VOC 2012 + SBD ``SegmentationClassAug`` and the standard train/val image lists
(how: :mod:`util.prepare_pascal`).

    python -m tools.prepare_pascal --voc-root data/VOCdevkit/VOC2012 --sbd-root data/benchmark_RELEASE
"""
from __future__ import annotations

import argparse

from util.errors import cli_entry
from util.fss_lists import make_lists_command
from util.prepare_pascal import prepare_pascal


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc-root", required=True, help="VOCdevkit/VOC2012")
    parser.add_argument("--sbd-root", required=True, help="benchmark_RELEASE (or benchmark_RELEASE/dataset)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    counts = prepare_pascal(args.voc_root, args.sbd_root, args.workers)
    print(f"prepare_pascal: train {counts['train']} images, val {counts['val']} images; next: "
          f"{make_lists_command('pascal', args.voc_root)}")


if __name__ == "__main__":
    main()
