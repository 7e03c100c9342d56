"""FSS-1000 (Wei et al., CVPR 2020): its on-disk layout, the class split, the lists and the class-name words.

Layout as published: ``<data_root>/<class name>/<n>.jpg`` with the object mask ``<n>.png`` beside it (0 background,
255 object; read as HSNet does, foreground = grey level >= 128), 1,000 class folders, 10 pairs each, mostly 224 x 224.

One split, no folds (config ``split: 0``): 520 training, 240 validation and 240 test classes. The default is HSNet's
published split, committed in ``lists/published/fss_classes/{train,val,test}.txt`` (HSNet's ``trn.txt``, ``val.txt``,
``test.txt``; the test classes are the FSS-1000 authors'). ``prepare_fss`` writes the split it uses to
``<list_root>/fss/splits/`` with its source (:data:`SPLIT_SOURCES`): ``published``; ``seeded``, the published test
classes and the other 760 class folders divided by a fixed seed (for a copy whose folders are not the published
names); or ``files``, HSNet-format lists given with ``--splits``. Class ids follow HSNet's order: the sorted training
names are 1..520, the sorted validation names 521..760, the sorted test names 761..1000 (HSNet's id + 1; 0 is
background).

Lists (the format of ``util/data/lists.py``; every item holds its one class), under ``<list_root>/fss/fold0/``:
``train_min<N>_<rule>.json`` (all three ``novel_in_train`` rules: one class per image, so they coincide),
``val_min<N>.json`` (validation classes: stage-2 model selection), ``test_min<N>.json`` (test classes: test.py),
``base_train_min<N>.json`` / ``base_val_min<N>.json`` (stage 1: the training classes, each class's last pair held
out for validation). A pair counts when its mask has at least N foreground pixels; unreadable pairs and pairs whose
image and mask sizes differ are left out and reported.

Class-name words (GIM's vectors): a name is its own words (lower-case, "'s" dropped, split on underscores) unless
``lists/published/fss_class_words.tsv`` gives it a row; every name of the published split resolves to GloVe 6B
words that way (``embeddings/fss_glove50.npy`` holds their vectors).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from util import REPO
from util.common.cli import tool_command
from util.common.errors import UserError
from util.data.benchmarks.base import Benchmark
from util.data.image_io import binary_object, read_grey

NUM_CLASSES = 1000
SPLIT_SIZES = {"train": 520, "val": 240, "test": 240}
SPLIT_SEED = 0
PUBLISHED = REPO / "lists" / "published"
PUBLISHED_SPLIT_DIR = PUBLISHED / "fss_classes"
CLASS_WORDS_FILE = PUBLISHED / "fss_class_words.tsv"
HSNET_SPLIT_FILES = {"train": "trn.txt", "val": "val.txt", "test": "test.txt"}
SPLIT_SOURCES = {
    "published": "HSNet's published split (lists/published/fss_classes)",
    "seeded": (f"the published test classes; the other class folders sorted and divided by "
               f"numpy.random.default_rng({SPLIT_SEED}).permutation, the first {SPLIT_SIZES['train']} train, the rest val"),
    "files": "HSNet-format lists given with --splits",
}
"""Where a prepared split came from: the first line of ``<list_root>/fss/splits/source.txt``."""
SOURCE_FILE = "source.txt"


def split_ids() -> dict[str, range]:
    """Class ids of each split: train 1..520, val 521..760, test 761..1000."""
    ids, start = {}, 1
    for split, size in SPLIT_SIZES.items():
        ids[split] = range(start, start + size)
        start += size
    return ids


def read_name_list(path: Path) -> list[str]:
    """Class names, one a line (blank lines and CR line ends skipped)."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read class-name list {path} ({err})") from None


def published_split() -> dict[str, list[str]]:
    """HSNet's split as committed: ``{"train": [...], "val": [...], "test": [...]}``, each in its published order."""
    return {split: read_name_list(PUBLISHED_SPLIT_DIR / f"{split}.txt") for split in SPLIT_SIZES}


def names_in_id_order(split: dict[str, list[str]]) -> tuple[str, ...]:
    """The 1,000 names of a split in class-id order (id c is ``names[c - 1]``): sorted train, val, test."""
    return tuple(name for part in SPLIT_SIZES for name in sorted(split[part]))


def published_names() -> tuple[str, ...]:
    """The names of the published split in class-id order (the rows of ``embeddings/fss_glove50.npy``)."""
    return names_in_id_order(published_split())


def splits_dir(list_root: str | Path) -> Path:
    """Where the class split is written: ``<list_root>/fss/splits``."""
    return Path(list_root) / "fss" / "splits"


def _prepare_hint(list_root: str | Path) -> str:
    return f"python -m tools.prepare_fss --data-root <FSS-1000 folder> --list-root {list_root}"


def class_names(list_root: str | Path) -> tuple[str, ...]:
    """The 1,000 names in class-id order (id c is ``names[c - 1]``), from the split prepare_fss wrote."""
    folder = splits_dir(list_root)
    if not folder.is_dir():
        raise UserError(f"{folder}: no FSS-1000 class split; write it with: {_prepare_hint(list_root)}")
    split = {}
    for part, size in SPLIT_SIZES.items():
        split[part] = read_name_list(folder / f"{part}.txt")
        if len(split[part]) != size:
            raise UserError(f"{folder / f'{part}.txt'}: {len(split[part])} names, expected {size}; "
                            f"rerun {_prepare_hint(list_root)}")
    return names_in_id_order(split)


def split_source(list_root: str | Path) -> str:
    """Where the prepared split under ``list_root`` came from: one of :data:`SPLIT_SOURCES`."""
    path = splits_dir(list_root) / SOURCE_FILE
    lines = read_name_list(path) if path.is_file() else []
    if not lines or lines[0] not in SPLIT_SOURCES:
        raise UserError(f"{path}: no split source ({', '.join(SPLIT_SOURCES)}) on its first line; "
                        f"rerun {_prepare_hint(list_root)}")
    return lines[0]


# ---------------------------------------------------------------- masks and class-name words

def read_binary_mask(path: str | Path) -> np.ndarray:
    """A FSS-1000 mask as uint8 0/1 ``[H, W]`` on its stored pixel grid, by the black/white mask rule of
    :func:`util.data.image_io.binary_object` (foreground where its grey level is at least 128)."""
    return binary_object(read_grey(path))


def read_class_words(path: Path = CLASS_WORDS_FILE) -> dict[str, tuple[str, ...]]:
    """``class name -> words`` from a tab-separated table (``name<TAB>words``; '#' starts a comment)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the class-word table {path} ({err})") from None
    table: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].rstrip()
        if not line:
            continue
        name, sep, words = line.partition("\t")
        if not sep or not words.split() or not name.strip():
            raise UserError(f"{path}:{number}: expected 'class name<TAB>words'")
        if name.strip() in table:
            raise UserError(f"{path}:{number}: a second row for '{name.strip()}'; keep one")
        table[name.strip()] = tuple(words.lower().split())
    return table


def own_words(name: str) -> tuple[str, ...]:
    """A class name's own words: lower-case, "'s" dropped, split on underscores and spaces."""
    return tuple(token for token in re.split(r"[\s_]+", name.lower().replace("'s", "")) if token)


def class_words(name: str, table: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The words that stand for a class name: its row in the class-word table, else its own words."""
    return table[name] if name in table else own_words(name)


class Fss1000(Benchmark):
    """FSS-1000's facts as a :class:`util.data.benchmarks.Benchmark`: one class split, binary masks, its own test list."""

    def class_names(self, list_root: str | Path | None = None) -> tuple[str, ...]:
        return published_names() if list_root is None else class_names(list_root)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def novel_classes(self, fold: int, style: str | None) -> list[int]:
        self.check_fold(fold, style)
        return list(split_ids()["test"])

    def base_classes(self, fold: int, style: str | None) -> list[int]:
        self.check_fold(fold, style)
        return list(split_ids()["train"])

    def val_classes(self, fold: int, style: str | None) -> list[int]:
        self.check_fold(fold, style)
        return list(split_ids()["val"])

    def split_source(self, list_root: str | Path) -> str:
        return split_source(list_root)

    def lists_command(self, data_root: str | Path, list_root: str | Path, min_class_pixels: int) -> str:
        return tool_command("prepare_fss", data_root=data_root, list_root=list_root)

    def vectors_hint(self) -> str:
        return ("a split other than the published one has its own, written by tools.prepare_fss: "
                "lists/fss/fss_glove50.npy under your list_root")


FSS1000 = Fss1000("fss", title="FSS-1000", folds=1, binary_masks=True, pool_list=None, own_test_list=True,
                  stage1_holds_out=True, prepared_split=True, word_table=CLASS_WORDS_FILE)
