"""PASCAL-5i: VOC 2012 + SBD, 20 classes in 4 folds of 5 (fold k's novel classes are 5k+1..5k+5)."""
from __future__ import annotations

from pathlib import Path

from util.common.cli import tool_command
from util.data.benchmarks.base import FixedClasses

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)



class Pascal(FixedClasses):
    def preparation_command(self, data_root: str | Path) -> str:
        return tool_command("prepare_pascal", voc_root=data_root) + " --sbd-root SBD_ROOT"


PASCAL = Pascal("pascal", title="PASCAL-5i", names=PASCAL_CLASSES)
