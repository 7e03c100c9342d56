"""Class names and fold splits of the supported datasets (class id c is ``names[c - 1]``; 0 is background)."""
from __future__ import annotations

from pathlib import Path

from util.common.errors import UserError
from util.data.benchmarks import fss1000

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# COCO 2014 categories in ascending category-id order; contiguous id c = position + 1.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

SYNTH_COLOURS = ("red", "green", "blue", "yellow", "purple")
SYNTH_SHAPES = ("circle", "square", "triangle", "star")


def _synth_classes() -> tuple[str, ...]:
    """20 colour+shape classes ordered so fold k (ids 5k+1..5k+5) holds colour j with shape (j+k) % 4.

    Every fold's novel classes then use all five colours and shapes that also occur among its 15
    base classes, so a class-name embedding carries real information about an unseen class.
    """
    return tuple(
        f"{colour} {SYNTH_SHAPES[(j + fold) % len(SYNTH_SHAPES)]}"
        for fold in range(4)
        for j, colour in enumerate(SYNTH_COLOURS)
    )


SYNTH_CLASSES = _synth_classes()

DATASET_CLASSES = {"pascal": PASCAL_CLASSES, "coco": COCO_CLASSES, "synth": SYNTH_CLASSES}
DATASETS = (*DATASET_CLASSES, "fss")
NUM_FOLDS = 4
COCO_SPLIT_STYLES = ("fwb", "panet")
ONE_CLASS_DATASETS = ("fss",)
"""Datasets whose label files are binary masks of the image's one class (FSS-1000), not class-id maps."""


def class_names(dataset: str, list_root: str | Path = "lists") -> tuple[str, ...]:
    """Names of the dataset's classes, index i = class id i + 1 (FSS-1000: from the class split under ``list_root``)."""
    if dataset == "fss":
        return fss1000.class_names(list_root)
    try:
        return DATASET_CLASSES[dataset]
    except KeyError:
        raise UserError(f"unknown dataset '{dataset}'; choose one of {list(DATASETS)}") from None


def split_source(dataset: str, list_root: str | Path = "lists") -> str | None:
    """Where the dataset's class split came from: FSS-1000's prepared split (``published``, ``seeded`` or ``files``,
    :data:`util.data.benchmarks.fss1000.SPLIT_SOURCES`); None for the datasets whose folds are fixed."""
    return fss1000.split_source(list_root) if dataset == "fss" else None


def num_classes(dataset: str) -> int:
    """Number of object classes (background excluded)."""
    return fss1000.NUM_CLASSES if dataset == "fss" else len(class_names(dataset))


def num_folds(dataset: str) -> int:
    """Folds of a dataset: 4 (PASCAL-5i, COCO-20i, synth), 1 (FSS-1000: one class split)."""
    num_classes(dataset)  # validates the name
    return 1 if dataset == "fss" else NUM_FOLDS


def _check_fold(dataset: str, fold: int) -> None:
    folds = num_folds(dataset)
    if not isinstance(fold, int) or not 0 <= fold < folds:
        allowed = "0 (FSS-1000 has one class split)" if folds == 1 else f"0..{folds - 1}"
        raise UserError(f"fold (config key 'split') must be {allowed}, got {fold!r}")


def novel_classes(dataset: str, fold: int, coco_split_style: str = "fwb") -> list[int]:
    """Class ids held out as novel in ``fold`` (the fold's test classes)."""
    _check_fold(dataset, fold)
    if dataset == "fss":
        return list(fss1000.split_ids()["test"])
    total = num_classes(dataset)
    per_fold = total // NUM_FOLDS
    if dataset == "coco":
        if coco_split_style == "fwb":
            return list(range(fold + 1, total + 1, NUM_FOLDS))
        if coco_split_style != "panet":
            raise UserError(
                f"unknown COCO split style '{coco_split_style}' (config key 'coco_split_style'); "
                f"choose one of {list(COCO_SPLIT_STYLES)}"
            )
    return list(range(per_fold * fold + 1, per_fold * (fold + 1) + 1))


def base_classes(dataset: str, fold: int, coco_split_style: str = "fwb") -> list[int]:
    """Class ids used for training in ``fold``, ascending: all classes that are not novel (FSS-1000: the 520
    training classes; its 240 validation classes are neither)."""
    if dataset == "fss":
        _check_fold(dataset, fold)
        return list(fss1000.split_ids()["train"])
    novel = set(novel_classes(dataset, fold, coco_split_style))
    return [c for c in range(1, num_classes(dataset) + 1) if c not in novel]


def val_classes(dataset: str, fold: int, coco_split_style: str = "fwb") -> list[int]:
    """Class ids of the stage-2 validation episodes: the novel classes (the PASCAL/COCO protocol), or FSS-1000's
    240 validation classes."""
    if dataset == "fss":
        _check_fold(dataset, fold)
        return list(fss1000.split_ids()["val"])
    return novel_classes(dataset, fold, coco_split_style)


def stage1_ignore_index(dataset: str, fold: int, coco_split_style: str, ignore_label: int) -> int:
    """The ignore value of stage-1 targets: ``ignore_label``, or -1 when a base class's target value (its rank + 1)
    would equal it (FSS-1000's 520 base classes pass 255)."""
    return -1 if len(base_classes(dataset, fold, coco_split_style)) >= ignore_label else ignore_label
