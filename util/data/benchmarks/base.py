"""What a benchmark is to this code (:class:`Benchmark`); each module of this package makes one (its classes, folds,
file layout, preparation commands) and :mod:`util.data.registry` holds them by name."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from util.common.cli import tool_command
from util.common.errors import UserError

POOL_LIST = "ImageSets/SegmentationAug/{subset}.txt"  # the PASCAL layout of the image pools (synth uses it too)


@dataclass(frozen=True)
class Benchmark:
    """What a benchmark is to this code. Subclasses say how its classes and folds are made (``class_names``,
    ``novel_classes``); the fields say how its files look and how it is tested; ``title`` is its name in messages.

    ``split_styles``: fold layouts a config chooses with ``coco_split_style`` (COCO-20i's ``fwb`` and ``panet``; run
    folders and lists get one level per style), empty where there is one. ``binary_masks``: a label file is the binary
    mask of its image's one class (FSS-1000), not a class-id map. ``pool_list``: the image pools inside the data root
    (``{subset}`` = train/val; None: no pools, so stage 1 needs ``base_images fold_lists``). ``own_test_list``: test.py
    reads a ``test`` list of its own test classes instead of ``val``. ``stage1_holds_out``: stage 1 trains on
    ``base_train`` (the training list without the pair of each class it validates on). ``prepared_split``: the class
    split is written when the data is prepared (FSS-1000), so identities record where it came from. ``word_table``:
    a table of the words each class name stands for, for the class vectors (None: the names' own words).
    """

    name: str
    title: str = ""
    folds: int = 4
    split_styles: tuple[str, ...] = ()
    binary_masks: bool = False
    pool_list: str | None = POOL_LIST
    own_test_list: bool = False
    stage1_holds_out: bool = False
    prepared_split: bool = False
    word_table: Path | None = None

    # ---------------------------------------------------------------- classes and folds

    def class_names(self, list_root: str | Path | None = None) -> tuple[str, ...]:
        """The class names in id order (a prepared split's under ``list_root``, where the benchmark has one)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Object classes (background excluded)."""
        return len(self.class_names())

    @property
    def baseline(self) -> str:
        """What the baseline next to every result predicts: ``every-object`` (every labelled object of the query), or
        ``whole-image`` where a mask holds its image's one object (``binary_masks``)."""
        return "whole-image" if self.binary_masks else "every-object"

    def check_fold(self, fold: int, style: str | None) -> None:
        """UserError for a fold or split style this benchmark does not have."""
        if not isinstance(fold, int) or not 0 <= fold < self.folds:
            allowed = f"0 ({self.title or self.name} has one class split)" if self.folds == 1 else f"0..{self.folds - 1}"
            raise UserError(f"fold (config key 'split') must be {allowed}, got {fold!r}")
        if self.split_styles and style not in self.split_styles:
            raise UserError(f"unknown {self.title or self.name} split style '{style}' (config key 'coco_split_style'); choose one of "
                            f"{list(self.split_styles)}")

    def novel_classes(self, fold: int, style: str | None) -> list[int]:
        """Class ids held out as novel in ``fold`` (its test classes): by default fold k's consecutive share."""
        self.check_fold(fold, style)
        per_fold = self.num_classes // self.folds
        return list(range(per_fold * fold + 1, per_fold * (fold + 1) + 1))

    def base_classes(self, fold: int, style: str | None) -> list[int]:
        """Class ids trained on in ``fold``, ascending: by default every class that is not novel."""
        novel = set(self.novel_classes(fold, style))
        return [c for c in range(1, self.num_classes + 1) if c not in novel]

    def val_classes(self, fold: int, style: str | None) -> list[int]:
        """Class ids of stage-2 validation: by default the novel classes (the PASCAL/COCO protocol)."""
        return self.novel_classes(fold, style)

    def split_source(self, list_root: str | Path) -> str | None:
        """Where a prepared class split came from (``prepared_split`` benchmarks), else None."""
        return None

    # ---------------------------------------------------------------- files and commands

    def list_dir(self, list_root: str | Path, style: str | None) -> Path:
        """``<list_root>/<name>`` (one level more per split style, e.g. ``lists/coco/fwb``); also the layout of the
        run folders under ``initmodel/`` and ``exp/``."""
        root = Path(list_root) / self.name
        return root / style if self.split_styles else root

    def pool_list_path(self, data_root: str | Path, subset: str) -> Path:
        """The image pool of ``subset`` (train/val) inside the data root."""
        if self.pool_list is None:
            raise UserError(f"{self.name} has no image pools; use base_images fold_lists (config key base_images)")
        return Path(data_root) / self.pool_list.format(subset=subset)

    def preparation_command(self, data_root: str | Path) -> str | None:
        """The command that writes the labels and image pools into ``data_root`` (None: used as published)."""
        return None

    def creation_command(self, data_root: str | Path) -> str | None:
        """The command that makes the whole dataset in ``data_root`` from nothing (a generated benchmark), else None."""
        return None

    def label_remedy(self, data_root: str | Path) -> str | None:
        """What rebuilds a broken label file (None: no tool does, the file is as published)."""
        command = self.preparation_command(data_root)
        return command and f"rebuild it with {command}"

    def lists_command(self, data_root: str | Path, list_root: str | Path, min_class_pixels: int) -> str:
        """The exact command that writes the lists this benchmark's runs read."""
        extra = {} if min_class_pixels == 2048 else {"min_class_pixels": min_class_pixels}
        return tool_command("make_lists", dataset=self.name, data_root=data_root, list_root=list_root, **extra)

    def vectors_hint(self) -> str:
        """How to build this benchmark's class vectors."""
        return f"build the right one with: {tool_command('embed_classes', dataset=self.name)}"


@dataclass(frozen=True)
class FixedClasses(Benchmark):
    """A benchmark whose classes are a fixed list (PASCAL-5i, COCO-20i, synth)."""

    names: tuple[str, ...] = ()

    def class_names(self, list_root: str | Path | None = None) -> tuple[str, ...]:
        return self.names


def quoted(path: str | Path) -> str:
    """A path as a shell word."""
    return shlex.quote(str(path))
