"""Time ``make_lists`` on a synthetic 10,000-image PASCAL-layout tree (target: < 60 s on 2 cores).

Labels are 500x375 class-id PNGs (the typical VOC size) with 1-3 random rectangles and 255 borders;
every image entry is a hard link to one JPEG of the same size. The tree is built in a temporary folder.

    python -m bench.lists [--images 10000] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from tools.make_lists import make_lists
from util.data.image_io import write_label

HEIGHT, WIDTH = 375, 500


def _label(job: tuple[str, int]) -> None:
    root, index = job
    rng = np.random.default_rng(index)
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    for class_id in rng.choice(20, size=int(rng.integers(1, 4)), replace=False) + 1:
        top, left = int(rng.integers(0, HEIGHT - 40)), int(rng.integers(0, WIDTH - 40))
        h, w = int(rng.integers(20, HEIGHT - top)), int(rng.integers(20, WIDTH - left))
        label[top:top + h, left:left + w] = 255
        label[top + 3:top + h - 3, left + 3:left + w - 3] = class_id
    write_label(os.path.join(root, "SegmentationClassAug", f"{index:06d}.png"), label)


def build_tree(root: Path, images: int, workers: int) -> None:
    """A PASCAL-layout tree with ``images`` images, 80% in the train list and 20% in val."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets/SegmentationAug").mkdir(parents=True)
    source = root / "source.jpg"
    cv2.imwrite(str(source), np.full((HEIGHT, WIDTH, 3), 128, np.uint8))
    for index in range(images):
        os.link(source, root / "JPEGImages" / f"{index:06d}.jpg")
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_label, [(str(root), i) for i in range(images)], chunksize=64))
    lines = [f"JPEGImages/{i:06d}.jpg SegmentationClassAug/{i:06d}.png\n" for i in range(images)]
    split = images * 4 // 5
    (root / "ImageSets/SegmentationAug/train.txt").write_text("".join(lines[:split]))
    (root / "ImageSets/SegmentationAug/val.txt").write_text("".join(lines[split:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "VOC2012"
        start = time.perf_counter()
        build_tree(root, args.images, args.workers)
        print(f"built a {args.images}-image {WIDTH}x{HEIGHT} tree in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        written = make_lists("pascal", root, Path(folder) / "lists", workers=args.workers)
        elapsed = time.perf_counter() - start
        print(f"make_lists (pascal, {args.images} images, {args.workers} workers): {len(written)} lists in "
              f"{elapsed:.1f} s ({1000 * elapsed / args.images:.2f} ms/image; target < 60 s)")


if __name__ == "__main__":
    main()
