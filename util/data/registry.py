"""One home per benchmark: everything that differs between PASCAL-5i, COCO-20i, FSS-1000, synth (and any benchmark a
user adds) is said by its :class:`util.data.benchmarks.base.Benchmark`, made by one module of ``util/data/benchmarks/``
and registered here; the rest of the code asks this registry (:func:`benchmark`) and never branches on a dataset's
name.

A new benchmark is one module in ``util/data/benchmarks/`` (its class names, folds, file layout, preparation command)
registered below, its preparation tool and its configs; a test can register one from the test file alone
(:func:`register`).

The functions below are the questions the rest of the code asks, by the config's ``dataset`` name: class names (class
id c is ``names[c - 1]``; 0 is background), the novel, base and validation classes of a fold, the stage-1 ignore value.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from util.common.errors import UserError
from util.data.benchmarks.base import Benchmark
from util.data.benchmarks.coco import COCO
from util.data.benchmarks.fss1000 import FSS1000
from util.data.benchmarks.pascal import PASCAL
from util.data.benchmarks.synth import SYNTH

_REGISTRY: dict[str, Benchmark] = {}


def register(item: Benchmark) -> Benchmark:
    """Add ``item`` to the registry under its name (replacing one of the same name) and return it."""
    _REGISTRY[item.name] = item
    return item


def benchmark(name: str) -> Benchmark:
    """The benchmark registered as ``name`` (the config's ``dataset``); UserError naming the closest ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown dataset '{name}' (config key 'dataset'); {hint}the benchmarks are: "
                        f"{', '.join(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    """Every registered benchmark's name."""
    return tuple(_REGISTRY)


def class_names(dataset: str, list_root: str | Path = "lists") -> tuple[str, ...]:
    """Names of the dataset's classes, index i = class id i + 1."""
    return benchmark(dataset).class_names(list_root)


def split_source(dataset: str, list_root: str | Path = "lists") -> str | None:
    """Where the dataset's prepared class split came from; None for benchmarks whose folds are fixed."""
    return benchmark(dataset).split_source(list_root)


def num_classes(dataset: str) -> int:
    """Number of object classes (background excluded)."""
    return benchmark(dataset).num_classes


def num_folds(dataset: str) -> int:
    """Folds of a dataset."""
    return benchmark(dataset).folds


def novel_classes(dataset: str, fold: int, coco_split_style: str = "fwb") -> list[int]:
    """Class ids held out as novel in ``fold`` (the fold's test classes)."""
    return benchmark(dataset).novel_classes(fold, coco_split_style)


def base_classes(dataset: str, fold: int, coco_split_style: str = "fwb") -> list[int]:
    """Class ids used for training in ``fold``, ascending."""
    return benchmark(dataset).base_classes(fold, coco_split_style)


def val_classes(dataset: str, fold: int, coco_split_style: str = "fwb") -> list[int]:
    """Class ids of the stage-2 validation episodes."""
    return benchmark(dataset).val_classes(fold, coco_split_style)


def stage1_ignore_index(dataset: str, fold: int, coco_split_style: str, ignore_label: int) -> int:
    """The ignore value of stage-1 targets: ``ignore_label``, or -1 when a base class's target value (its rank + 1)
    would equal it (FSS-1000's 520 base classes pass 255)."""
    return -1 if len(base_classes(dataset, fold, coco_split_style)) >= ignore_label else ignore_label


for _builtin in (PASCAL, COCO, FSS1000, SYNTH):
    register(_builtin)
