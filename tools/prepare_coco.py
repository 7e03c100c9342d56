"""Build COCO-20i class-id masks from COCO 2014 instance annotations, with pycocotools.

Inputs under ``--coco-root``: ``train2014/``, ``val2014/`` (images) and
``annotations/instances_{train,val}2014.json``. Output: ``masks/{train2014,val2014}/<image>.png``
with contiguous class ids 1..80 (COCO category ids in ascending order), 0 background and 255 for
crowd regions, plus the image lists ``masks/{train,val}.txt``. Objects are painted largest first so
small objects stay visible; crowd regions are painted first and objects drawn over them. Work runs in
parallel with a progress bar. Re-running redoes only what is not current: ``masks/<folder>.manifest.json``
records the annotation file's hash and, per mask, a digest of its image's annotations and the hash of
the PNG written, so only masks whose annotations changed, or whose file is missing, truncated or
altered, are made again (util/data/mask_manifest.py); masks are written atomically.

Command line:

    python -m tools.prepare_coco --coco-root data/coco
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from util.common.atomic import write_text_if_changed
from util.common.errors import UserError, cli_entry
from util.data.image_io import IGNORE_ID, encode_label_png
from util.data.lists import make_lists_command, pool_list_path
from util.data.mask_manifest import MaskManifest, make_masks, sha256_bytes, sha256_json

SPLITS = {"train": "train2014", "val": "val2014"}
CROWD = IGNORE_ID
PRODUCER = "prepare_coco 1"  # the rendering rule's version: change it when render_mask changes, so masks are redone


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


def _render_png(job: tuple[int, int, list[dict], dict[int, int]]) -> bytes:
    height, width, annotations, category_to_class = job
    return encode_label_png(render_mask(height, width, annotations, category_to_class))


def prepare_coco(coco_root: str | Path, workers: int | None = None) -> dict[str, int]:
    """Write the masks that are not current and the image lists for train and val; returns the number of images
    per list (and prints, per folder, how many masks were written and how many were already current)."""
    root = Path(coco_root)
    counts = {}
    for subset, folder in SPLITS.items():
        ann_path = root / "annotations" / f"instances_{folder}.json"
        if not ann_path.is_file():
            raise UserError(f"{ann_path}: annotation file not found; download annotations_trainval2014.zip "
                            f"and unzip it into {root}")
        raw = ann_path.read_bytes()
        try:
            data = json.loads(raw)
            categories = sorted(c["id"] for c in data["categories"])
            images = sorted(data["images"], key=lambda im: im["file_name"])
            annotations = data["annotations"]
        except (ValueError, KeyError, TypeError):  # ValueError: not JSON, or not text at all
            raise UserError(f"{ann_path}: not a COCO instances file; re-download it") from None
        names = [image["file_name"] for image in images]
        repeated = sorted({name for previous, name in zip(names, names[1:]) if name == previous})
        if repeated:
            raise UserError(f"{ann_path}: {len(repeated)} images are listed more than once (e.g. {repeated[0]}), so "
                            "the image list would repeat them; re-download the annotation file")
        if len(categories) != 80:
            raise UserError(f"{ann_path}: expected the 80 COCO categories, found {len(categories)}")
        category_to_class = {cat: i + 1 for i, cat in enumerate(categories)}
        classes_digest = sha256_json(sorted(category_to_class.items()))
        per_image: dict[int, list[dict]] = {}
        for ann in annotations:
            per_image.setdefault(ann["image_id"], []).append(ann)
        wanted, lines = [], []
        for image in images:
            stem = Path(image["file_name"]).stem
            image_rel, mask_rel = f"{folder}/{image['file_name']}", f"masks/{folder}/{stem}.png"
            if not (root / image_rel).is_file():
                raise UserError(f"{root / image_rel}: image not found; unzip {folder}.zip into {root}")
            lines.append(f"{image_rel} {mask_rel}\n")
            image_annotations = sorted(per_image.get(image["id"], []), key=lambda a: a["id"])
            source = sha256_json({"height": image["height"], "width": image["width"], "classes": classes_digest,
                                  "annotations": image_annotations})
            wanted.append((f"{stem}.png", source, (image["height"], image["width"], image_annotations, category_to_class)))
        manifest = MaskManifest(root / "masks" / folder, PRODUCER,
                                {"annotation_file": ann_path.name, "annotation_sha256": sha256_bytes(raw)})
        written, current = make_masks(manifest, wanted, _render_png, workers or min(os.cpu_count() or 1, 8),
                                      f"masks/{folder}")
        print(f"masks/{folder}: {written} written, {current} already current ({manifest.path.name})")
        write_text_if_changed(pool_list_path(root, "coco", subset), "".join(lines))
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
          f"{make_lists_command('coco', args.coco_root)}")


if __name__ == "__main__":
    main()
