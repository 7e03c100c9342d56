"""Build COCO-20i class-id masks from COCO 2014 instance annotations, with pycocotools.

Inputs under ``--coco-root``: ``train2014/``, ``val2014/`` (images) and
``annotations/instances_{train,val}2014.json``. Output: ``masks/{train2014,val2014}/<image>.png``
with contiguous class ids 1..80 (COCO category ids in ascending order), 0 background and 255 for
crowd regions, plus the image lists ``masks/{train,val}.txt``. Objects are painted largest first so
small objects stay visible; crowd regions are painted first and objects drawn over them. Masks already
written are skipped (resumable), work runs in parallel with a progress bar.

    python -m util.prepare_coco --coco-root data/coco
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from util.errors import UserError, cli_entry
from util.fss_lists import pool_list_path
from util.image_io import write_label

SPLITS = {"train": "train2014", "val": "val2014"}
CROWD = 255


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    """A binary mask from a polygon list, an uncompressed RLE or a compressed RLE."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def render_mask(height: int, width: int, annotations: list[dict], category_to_class: dict[int, int]) -> np.ndarray:
    """The class-id mask of one image from its annotations."""
    label = np.zeros((height, width), dtype=np.uint8)
    for ann in (a for a in annotations if a.get("iscrowd", 0)):
        label[_decode(ann["segmentation"], height, width)] = CROWD
    objects = sorted((a for a in annotations if not a.get("iscrowd", 0)), key=lambda a: (-a.get("area", 0), a["id"]))
    for ann in objects:
        label[_decode(ann["segmentation"], height, width)] = category_to_class[ann["category_id"]]
    return label


def _write(job: tuple[str, int, int, list[dict], dict[int, int]]) -> None:
    target, height, width, annotations, category_to_class = job
    write_label(target, render_mask(height, width, annotations, category_to_class))


def prepare_coco(coco_root: str | Path, workers: int | None = None) -> dict[str, int]:
    """Write the masks and the image lists for train and val; returns the number of images per list."""
    root = Path(coco_root)
    counts = {}
    for subset, folder in SPLITS.items():
        ann_path = root / "annotations" / f"instances_{folder}.json"
        if not ann_path.is_file():
            raise UserError(f"{ann_path}: annotation file not found; download annotations_trainval2014.zip "
                            f"and unzip it into {root}")
        try:
            data = json.loads(ann_path.read_text())
            categories = sorted(c["id"] for c in data["categories"])
            images = sorted(data["images"], key=lambda im: im["file_name"])
            annotations = data["annotations"]
        except (ValueError, KeyError, TypeError):  # ValueError: not JSON, or not text at all
            raise UserError(f"{ann_path}: not a COCO instances file; re-download it") from None
        if len(categories) != 80:
            raise UserError(f"{ann_path}: expected the 80 COCO categories, found {len(categories)}")
        category_to_class = {cat: i + 1 for i, cat in enumerate(categories)}
        per_image: dict[int, list[dict]] = {}
        for ann in annotations:
            per_image.setdefault(ann["image_id"], []).append(ann)
        jobs, lines = [], []
        for image in images:
            stem = Path(image["file_name"]).stem
            image_rel, mask_rel = f"{folder}/{image['file_name']}", f"masks/{folder}/{stem}.png"
            if not (root / image_rel).is_file():
                raise UserError(f"{root / image_rel}: image not found; unzip {folder}.zip into {root}")
            lines.append(f"{image_rel} {mask_rel}\n")
            if not (root / mask_rel).is_file():
                jobs.append((str(root / mask_rel), image["height"], image["width"],
                             per_image.get(image["id"], []), category_to_class))
        (root / "masks" / folder).mkdir(parents=True, exist_ok=True)
        if jobs:
            with ProcessPoolExecutor(workers or min(os.cpu_count() or 1, 8)) as pool:
                list(tqdm(pool.map(_write, jobs, chunksize=16), total=len(jobs), desc=f"masks/{folder}"))
        else:
            print(f"masks/{folder}: all {len(lines)} masks already written", file=sys.stderr)
        pool_list_path(root, "coco", subset).write_text("".join(lines))
        counts[subset] = len(lines)
    return counts


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco-root", required=True, help="folder holding train2014/, val2014/, annotations/")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    counts = prepare_coco(args.coco_root, args.workers)
    print(f"prepare_coco: train {counts['train']} images, val {counts['val']} images; next: "
          f"python -m util.make_lists --dataset coco --data-root {args.coco_root}")


if __name__ == "__main__":
    main()
