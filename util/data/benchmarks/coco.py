"""COCO-20i: COCO 2014, 80 classes in 4 folds of 20, in two fold layouts (config key ``coco_split_style``):
``fwb`` (fold k's novel classes k+1, k+5, ..., k+77; the BAM/MIANet default) and ``panet`` (20k+1..20k+20)."""
from __future__ import annotations

from pathlib import Path

from util.common.cli import tool_command
from util.data.benchmarks.base import FixedClasses

SPLIT_STYLES = ("fwb", "panet")
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



class Coco(FixedClasses):
    def novel_classes(self, fold: int, style: str | None) -> list[int]:
        self.check_fold(fold, style)
        if style == "fwb":
            return list(range(fold + 1, self.num_classes + 1, self.folds))
        return super().novel_classes(fold, style)

    def preparation_command(self, data_root: str | Path) -> str:
        return tool_command("prepare_coco", coco_root=data_root)


COCO = Coco("coco", title="COCO-20i", names=COCO_CLASSES, split_styles=SPLIT_STYLES, pool_list="masks/{subset}.txt")
