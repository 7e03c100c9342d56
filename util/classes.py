"""Class names and fold splits of the supported datasets (class id c is ``names[c - 1]``; 0 is background)."""
from __future__ import annotations

from util.errors import UserError

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
NUM_FOLDS = 4
COCO_SPLIT_STYLES = ("fwb", "panet")


def class_names(dataset: str) -> tuple[str, ...]:
    """Names of the dataset's classes, index i = class id i + 1."""
    try:
        return DATASET_CLASSES[dataset]
    except KeyError:
        raise UserError(f"unknown dataset '{dataset}'; choose one of {sorted(DATASET_CLASSES)}") from None


def num_classes(dataset: str) -> int:
    """Number of object classes (background excluded)."""
    return len(class_names(dataset))


def novel_classes(dataset: str, fold: int, coco_split_style: str = "fwb") -> list[int]:
    """Class ids held out as novel in ``fold`` (the fold's test classes)."""
    total = num_classes(dataset)
    if not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise UserError(f"fold (config key 'split') must be 0..{NUM_FOLDS - 1}, got {fold!r}")
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
    """Class ids used for training in ``fold`` (all classes that are not novel), ascending."""
    novel = set(novel_classes(dataset, fold, coco_split_style))
    return [c for c in range(1, num_classes(dataset) + 1) if c not in novel]
