"""Write the per-fold few-shot lists of a dataset (layout and format: ``util/data/lists.py``).

Every label of the train and val pools is read once (in parallel) to count its pixels per class;
a class counts in an image only with at least ``--min-class-pixels`` pixels, and is present with any.
Then, for every fold (and for COCO both split styles), the lists are written -- the training list
once per ``novel_in_train`` rule -- sorted, so the output is identical byte for byte on every run and
for any number of workers.

Command line:

    python -m tools.make_lists --dataset synth --data-root data/synth [--list-root lists] [--min-class-pixels 2048]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from util.common.atomic import write_bytes_atomic
from util.common.errors import UserError, cli_entry
from util.data.registry import base_classes, benchmark, novel_classes, num_classes
from util.data.image_io import (
    IGNORE_ID,
    check_label_values,
    exif_note,
    image_size,
    read_label,
)
from util.data.lists import (
    LIST_FORMAT,
    Item,
    check_dataset_fold,
    fold_list_path,
    image_key,
    label_remedy,
    pool_list_path,
    read_pool_lines,
)

CHUNK = 64


def count_classes(job: tuple[str, str, str, int, str, int, str | None]) -> dict[int, int]:
    """Pixels per class id (background and ignore excluded) of one label, after checking the pair."""
    root, image, label, total_classes, list_path, line, remedy = job
    image_path, label_path = os.path.join(root, image), os.path.join(root, label)
    where = f"{list_path}:{line}"
    for path, kind in ((image_path, "image"), (label_path, "label")):
        if not os.path.isfile(path):
            raise UserError(f"{where}: {kind} {path} not found; fix data_root or regenerate the image list")
    values = read_label(label_path, remedy)
    check_label_values(values, total_classes, label_path, IGNORE_ID)
    if image_size(image_path) != values.shape:
        raise UserError(f"{where}: image {image_path} is {image_size(image_path)} but label {label_path} is "
                        f"{values.shape}; they must have the same height and width{exif_note(image_path)}")
    counts = np.bincount(values.ravel(), minlength=256)[1:total_classes + 1]
    return {int(c) + 1: int(n) for c, n in enumerate(counts) if n}


def pixel_counts(data_root: Path, dataset: str, subset: str, workers: int) -> list[tuple[str, str, dict[int, int]]]:
    """Every pool image of ``subset`` with its per-class pixel counts, in list order."""
    lines = read_pool_lines(data_root, dataset, subset)
    list_path = pool_list_path(data_root, dataset, subset)
    total = num_classes(dataset)
    remedy = label_remedy(dataset, data_root)
    jobs = [(str(data_root), image, label, total, str(list_path), number, remedy) for number, (image, label) in lines]
    if workers == 1:
        counts = [count_classes(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            counts = list(pool.map(count_classes, jobs, chunksize=CHUNK))
    return [(image, label, count) for (_, (image, label)), count in zip(lines, counts)]


def select(pool: Iterable[tuple[str, str, dict[int, int]]], classes: Sequence[int], banned: Sequence[int],
           min_pixels: int, ban_any_pixel: bool = False) -> list[Item]:
    """Images with at least one counted class in ``classes`` and none in ``banned``, sorted by path.

    A banned class excludes an image when it counts there, or with ``ban_any_pixel`` when it has any
    pixel there (BAM's ``filter_intersection``). Each item carries the counted and the present classes
    of ``classes``.
    """
    wanted, banned = set(classes), set(banned)
    items = []
    for image, label, counts in pool:
        present = set(counts)
        counted = {c for c, n in counts.items() if n >= min_pixels}
        if (present if ban_any_pixel else counted) & banned:
            continue
        eligible = tuple(sorted(counted & wanted))
        if eligible:
            items.append((image, label, eligible, tuple(sorted(present & wanted))))
    return sorted(items)


def write_list(path: Path, header: dict, items: list[Item]) -> None:
    """JSON with the header fields and one item per line (stable, diff-friendly), each image at most once, written
    atomically."""
    images = [image_key(image) for image, *_ in items]
    if len(set(images)) != len(images):
        repeated = next(image for image in images if images.count(image) > 1)
        raise ValueError(f"{path}: {len(images) - len(set(images))} items repeat an image, e.g. {repeated}")
    head = ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in header.items())
    body = ",\n".join("  " + json.dumps([image, label, list(counted), list(present)])
                       for image, label, counted, present in items)
    write_bytes_atomic(path, ("{\n" + head + ',\n "items": [\n' + body + "\n ]\n}\n").encode("utf-8"))


def make_lists(dataset: str, data_root: str | Path, list_root: str | Path = "lists", min_class_pixels: int = 2048,
               workers: int | None = None) -> list[Path]:
    """Write every fold's lists for ``dataset`` (both split styles for COCO); returns the files written."""
    check_dataset_fold(dataset, 0)
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"data root '{data_root}' does not exist; pass --data-root (config key data_root) "
                        "pointing at the prepared dataset")
    if min_class_pixels < 1:
        raise UserError(f"--min-class-pixels must be >= 1, got {min_class_pixels}")
    workers = workers or min(os.cpu_count() or 1, 8)
    pools = {subset: pixel_counts(data_root, dataset, subset, workers) for subset in ("train", "val")}
    known = benchmark(dataset)
    written = []
    for style in known.split_styles or (None,):
        for fold in range(known.folds):
            novel = novel_classes(dataset, fold, style)
            base = base_classes(dataset, fold, style)
            plans = {  # subset: (pool, classes, banned classes, banned at any pixel count)
                "train_drop_any": ("train", base, novel, True),
                "train_drop_counted": ("train", base, novel, False),
                "train_keep_as_background": ("train", base, (), False),
                "val": ("val", novel, (), False),
                "base_val": ("val", base, (), False),
            }
            for subset, (pool, classes, banned, ban_any_pixel) in plans.items():
                path = fold_list_path(list_root, dataset, fold, subset, min_class_pixels, style)
                header = {"format": LIST_FORMAT, "dataset": dataset, "fold": fold, "split_style": style,
                          "subset": subset, "min_class_pixels": min_class_pixels, "classes": list(classes)}
                write_list(path, header, select(pools[pool], classes, banned, min_class_pixels, ban_any_pixel))
                written.append(path)
    return written


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
