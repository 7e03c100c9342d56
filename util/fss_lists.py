"""Where the few-shot lists live and how they are read (written by ``util/make_lists.py``).

Image pools (inputs, inside the data root; one ``image label`` pair of root-relative paths a line):

    pascal, synth:  <data_root>/ImageSets/SegmentationAug/{train,val}.txt
    coco:           <data_root>/masks/{train,val}.txt

Per-fold lists (outputs, under ``<list_root>/<dataset>/``; for COCO one level more, ``fwb/`` or ``panet/``):

    fold<k>/train_min<N>.json            training queries: images whose classes (>= N pixels) are all base
    fold<k>/train_min<N>_keepnovel.json  training queries: every image with a base class (novel pixels -> background)
    fold<k>/val_min<N>.json              test queries: val images with a novel class
    fold<k>/base_val_min<N>.json         stage-1 validation: val images with a base class

Each JSON file holds a header (dataset, fold, split style, subset, classes, min_class_pixels) and
``items``: ``[image, label, [eligible class ids of the subset]]``, sorted by image path, one per line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from util.classes import novel_classes
from util.errors import UserError

POOL_LISTS = {
    "pascal": "ImageSets/SegmentationAug/{subset}.txt",
    "synth": "ImageSets/SegmentationAug/{subset}.txt",
    "coco": "masks/{subset}.txt",
}
SUBSETS = ("train", "train_keepnovel", "val", "base_val")


@dataclass(frozen=True)
class FoldList:
    """One per-fold list: the subset's classes and its images with their eligible classes."""

    path: Path
    classes: tuple[int, ...]
    items: tuple[tuple[str, str, tuple[int, ...]], ...]


def check_dataset_fold(dataset: str, fold: int, split_style: str = "fwb") -> None:
    """UserError for an unknown dataset, fold or COCO split style."""
    novel_classes(dataset, fold, split_style)


def pool_list_path(data_root: str | Path, dataset: str, subset: str) -> Path:
    """The image-pool list of ``subset`` (train/val) inside the data root."""
    return Path(data_root) / POOL_LISTS[dataset].format(subset=subset)


def dataset_list_dir(list_root: str | Path, dataset: str, split_style: str = "fwb") -> Path:
    """``<list_root>/<dataset>`` (``<list_root>/coco/<split_style>`` for COCO)."""
    root = Path(list_root) / dataset
    return root / split_style if dataset == "coco" else root


def fold_list_path(list_root: str | Path, dataset: str, fold: int, subset: str, min_class_pixels: int,
                   split_style: str = "fwb") -> Path:
    """Path of a per-fold list; ``subset`` is one of ``SUBSETS``."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown list subset {subset!r}")
    keep = subset.endswith("_keepnovel")
    name = f"{subset.removesuffix('_keepnovel')}_min{min_class_pixels}" + ("_keepnovel" if keep else "")
    return dataset_list_dir(list_root, dataset, split_style) / f"fold{fold}" / f"{name}.json"


def make_lists_command(dataset: str, data_root: str | Path, list_root: str | Path, min_class_pixels: int) -> str:
    """The exact command that writes the lists the dataset expects."""
    command = f"python -m util.make_lists --dataset {dataset} --data-root {data_root} --list-root {list_root}"
    return command + ("" if min_class_pixels == 2048 else f" --min-class-pixels {min_class_pixels}")


def read_fold_list(path: Path, rerun_hint: str) -> FoldList:
    """Load a per-fold list; UserError naming the command to run if it is missing or malformed."""
    if not path.is_file():
        raise UserError(f"{path}: list not found; generate it with: {rerun_hint}")
    try:
        data = json.loads(path.read_text())
        items = tuple((str(image), str(label), tuple(int(c) for c in classes)) for image, label, classes in data["items"])
        classes = tuple(int(c) for c in data["classes"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path}: not a valid list file; regenerate it with: {rerun_hint}") from None
    return FoldList(path, classes, items)
