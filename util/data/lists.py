"""Where the few-shot lists live and how they are read (written by ``python -m tools.make_lists``, :mod:`tools.make_lists`).

Image pools (inputs, inside the data root; one ``image label`` pair of root-relative paths a line):

    pascal, synth:  <data_root>/ImageSets/SegmentationAug/{train,val}.txt
    coco:           <data_root>/masks/{train,val}.txt

Per-fold lists (outputs, under ``<list_root>/<dataset>/``; for COCO one level more, ``fwb/`` or ``panet/``),
where a class *counts* in an image if it covers at least N pixels and is *present* if it has any pixel:

    fold<k>/train_min<N>_drop_any.json            training queries: a counted base class, no novel pixel at all (BAM)
    fold<k>/train_min<N>_drop_counted.json        training queries: a counted base class, no counted novel class
    fold<k>/train_min<N>_keep_as_background.json  training queries: a counted base class (novel pixels -> background)
    fold<k>/val_min<N>.json                       test queries: val images with a counted novel class
    fold<k>/base_val_min<N>.json                  stage-1 validation (``base_images: fold_lists``): a counted base class

FSS-1000 (``python -m tools.prepare_fss``, :mod:`util.data.benchmarks.fss1000`) has no pools and one fold, and two lists more:
``test_min<N>.json`` (its test classes; elsewhere test.py reads ``val``) and ``base_train_min<N>.json`` (stage 1
trains without the pair of each class it validates on).

The three training lists are the three values of the config key ``novel_in_train``. Each JSON file
holds a header (``format``, dataset, fold, split style, subset, classes, min_class_pixels) and
``items``: ``[image, label, [counted classes of the subset], [present classes of the subset]]``,
sorted by image path, one per line.

Every path in a list is relative to the data root; an absolute path is refused (naming the file and line or item).
Each image is listed once: a repeated line or item (the same image, spelled alike after normalisation, with the
same label and classes) is removed with one warning per file saying how many; the same image with another label
or other classes is refused.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from util.common.errors import UserError
from util.data.registry import benchmark, novel_classes

NOVEL_IN_TRAIN = ("drop_any", "drop_counted", "keep_as_background")
SUBSETS = tuple(f"train_{rule}" for rule in NOVEL_IN_TRAIN) + ("val", "base_val")
ALL_SUBSETS = SUBSETS + ("test", "base_train")  # a benchmark with its own test list, or stage 1's held-out pairs
LIST_FORMAT = 2  # 2: items carry the present classes as well as the counted ones

Item = tuple[str, str, tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class FoldList:
    """One per-fold list: the subset's classes and its images as ``(image, label, counted, present)``."""

    path: Path
    classes: tuple[int, ...]
    items: tuple[Item, ...]


def episode_subset(dataset: str, mode: str, novel_in_train: str) -> str:
    """The list episodes of ``mode`` (train, val, test) read: test reads the val list except where a benchmark has its
    own test classes (``own_test_list``: FSS-1000)."""
    if mode == "train":
        return train_subset(novel_in_train)
    return "test" if mode == "test" and benchmark(dataset).own_test_list else "val"


def stage1_subset(dataset: str, mode: str, novel_in_train: str) -> str:
    """The list stage 1 reads with ``base_images: fold_lists``: the training list (``stage1_holds_out``, FSS-1000:
    without the held-out pair of each class) and the base-class validation list."""
    if mode == "val":
        return "base_val"
    return "base_train" if benchmark(dataset).stage1_holds_out else train_subset(novel_in_train)


def check_dataset_fold(dataset: str, fold: int, split_style: str = "fwb") -> None:
    """UserError for an unknown dataset, fold or COCO split style."""
    novel_classes(dataset, fold, split_style)


def pool_list_path(data_root: str | Path, dataset: str, subset: str) -> Path:
    """The image-pool list of ``subset`` (train/val) inside the data root."""
    return benchmark(dataset).pool_list_path(data_root, subset)


def image_key(path: str) -> str:
    """A list path as compared when telling images apart (``./a//b.jpg`` is ``a/b.jpg``)."""
    return os.path.normpath(path)


def preparation_command(dataset: str, data_root: str | Path) -> str | None:
    """The command that writes ``dataset``'s labels and image pools into ``data_root`` (None: used as published)."""
    return benchmark(dataset).preparation_command(data_root)


def label_remedy(dataset: str, data_root: str | Path) -> str | None:
    """What rebuilds a broken label file of ``dataset`` (None: no tool does, the file is as published)."""
    return benchmark(dataset).label_remedy(data_root)


def _relative(path: str, where: str) -> str:
    if os.path.isabs(path):
        raise UserError(f"{where}: '{path}' is an absolute path; paths in a list are relative to the data root "
                        "(config key data_root): write it relative to that folder")
    return path


def unique_images(entries: list[tuple[int, tuple]], path: Path, unit: str, remedy: str) -> list[tuple[int, tuple]]:
    """``entries`` (``(line or item number, item)``, an item starting with its image and label paths) with each
    image once: an exact repeat is removed, and one warning says how many were and in which file; the
    same image with another label or classes is a UserError naming both places and ending with ``remedy``."""
    first: dict[str, tuple[int, tuple]] = {}
    kept, repeats = [], []
    for number, item in entries:
        key = image_key(item[0])
        if key not in first:
            first[key] = (number, item)
            kept.append((number, item))
            continue
        seen_number, seen = first[key]
        if (image_key(item[1]), *item[2:]) != (image_key(seen[1]), *seen[2:]):
            where = f"{path}:{number}" if unit == "line" else f"{path}: item {number}"
            raise UserError(f"{where}: {item[0]} is listed on {unit} {seen_number} with another label"
                            f"{'' if unit == 'line' else ' or classes'}; {remedy}")
        repeats.append((number, seen_number, item[0]))
    if repeats:
        number, seen_number, image = repeats[0]
        warnings.warn(f"{path}: {len(repeats)} duplicate {unit}s removed, each image is used once (first: {unit} "
                      f"{number} repeats {unit} {seen_number}, {image})", stacklevel=3)
    return kept


def read_pool(data_root: str | Path, dataset: str, subset: str) -> list[tuple[str, str]]:
    """``(image, label)`` root-relative pairs of a pool list (:func:`read_pool_lines`)."""
    return [pair for _, pair in read_pool_lines(data_root, dataset, subset)]


def read_pool_lines(data_root: str | Path, dataset: str, subset: str) -> list[tuple[int, tuple[str, str]]]:
    """``(line number, (image, label))`` of a pool list, root-relative, each image once (:func:`unique_images`);
    UserError naming the file and line if it is broken or a path is absolute."""
    path = pool_list_path(data_root, dataset, subset)
    if not path.is_file():
        raise UserError(f"{path}: image list not found; check data_root or create it with "
                        f"{preparation_command(dataset, data_root)}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file of 'image_path label_path' lines; regenerate the image list") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise UserError(f"{path}:{number}: expected 'image_path label_path', got '{line.strip()}'")
        pairs.append((number, tuple(_relative(field, f"{path}:{number}") for field in fields)))
    if not pairs:
        raise UserError(f"{path}: the image list is empty; regenerate it")
    return unique_images(pairs, path, "line", "keep the right line")


def dataset_list_dir(list_root: str | Path, dataset: str, split_style: str = "fwb") -> Path:
    """``<list_root>/<dataset>`` (one level more per split style: ``<list_root>/coco/<split_style>``)."""
    return benchmark(dataset).list_dir(list_root, split_style)


def train_subset(novel_in_train: str) -> str:
    """The training list of a ``novel_in_train`` rule; UserError for an unknown rule."""
    if novel_in_train not in NOVEL_IN_TRAIN:
        raise UserError(f"config key 'novel_in_train' must be one of {list(NOVEL_IN_TRAIN)}, got {novel_in_train!r}")
    return f"train_{novel_in_train}"


def fold_list_path(list_root: str | Path, dataset: str, fold: int, subset: str, min_class_pixels: int,
                   split_style: str = "fwb") -> Path:
    """Path of a per-fold list; ``subset`` is one of ``ALL_SUBSETS``."""
    if subset not in ALL_SUBSETS:
        raise ValueError(f"unknown list subset {subset!r}")
    if subset.startswith("train_"):
        name = f"train_min{min_class_pixels}_{subset.removeprefix('train_')}"
    else:
        name = f"{subset}_min{min_class_pixels}"
    return dataset_list_dir(list_root, dataset, split_style) / f"fold{fold}" / f"{name}.json"


def make_lists_command(dataset: str, data_root: str | Path, list_root: str | Path = "lists",
                       min_class_pixels: int = 2048) -> str:
    """The exact command that writes the lists the dataset expects (every "run make_lists" hint prints this one)."""
    return benchmark(dataset).lists_command(data_root, list_root, min_class_pixels)


def read_fold_list(path: Path, rerun_hint: str) -> FoldList:
    """Load a per-fold list, each image once (:func:`unique_images`); UserError naming the command to run if it is
    missing, malformed or of another list format, or naming the item if a path is absolute."""
    if not path.is_file():
        raise UserError(f"{path}: list not found; generate it with: {rerun_hint}")
    try:
        data = json.loads(path.read_text())
        version = data.get("format", 1)
        if version != LIST_FORMAT:
            raise UserError(f"{path}: list format {version}, this code reads format {LIST_FORMAT} "
                            f"(items with the present classes); regenerate the lists with: {rerun_hint}")
        items = [(number, (str(image), str(label), tuple(int(c) for c in counted), tuple(int(c) for c in present)))
                 for number, (image, label, counted, present) in enumerate(data["items"], start=1)]
        classes = tuple(int(c) for c in data["classes"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path}: not a valid list file; regenerate it with: {rerun_hint}") from None
    for number, (image, label, _, _) in items:
        for relative in (image, label):
            _relative(relative, f"{path}: item {number}")
    unique = unique_images(items, path, "item", f"regenerate the lists with: {rerun_hint}")
    return FoldList(path, classes, tuple(item for _, item in unique))
