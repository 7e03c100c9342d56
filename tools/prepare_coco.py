"""Build COCO-20i class-id masks from COCO 2014 instance annotations (how: :mod:`util.prepare_coco`).

    python -m tools.prepare_coco --coco-root data/coco
"""
from __future__ import annotations

import argparse

from util.errors import cli_entry
from util.fss_lists import make_lists_command
from util.prepare_coco import prepare_coco


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco-root", required=True, help="folder holding train2014/, val2014/, annotations/")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    counts = prepare_coco(args.coco_root, args.workers)
    print(f"prepare_coco: train {counts['train']} images, val {counts['val']} images; next: "
          f"{make_lists_command('coco', args.coco_root)}")


if __name__ == "__main__":
    main()
