"""FSS-1000 (Wei et al., CVPR 2020): its on-disk layout, the class split, the lists and the class-name words.

Layout as published: ``<data_root>/<class name>/<n>.jpg`` with the object mask ``<n>.png`` beside it (0 background,
255 object; read as HSNet does, foreground = grey level >= 128), 1,000 class folders, 10 pairs each, mostly 224 x 224.

One split, no folds (config ``split: 0``): 520 training, 240 validation and 240 test classes. The test classes are
the published ones (``lists/published/fss_test.txt``: HSNet's ``data/splits/fss/test.txt``, the FSS-1000 authors'
test split). HSNet drew its training/validation division at random and ships it as ``trn.txt`` / ``val.txt``; give
those with ``--splits`` to use it, otherwise the 760 other classes are divided by a fixed seed (recorded in
``<list_root>/fss/splits/source.txt``). Class ids follow HSNet's order: the sorted training names are 1..520, the
sorted validation names 521..760, the sorted test names 761..1000 (HSNet's id + 1; 0 is background).

Lists (the format of ``util/fss_lists.py``; every item holds its one class), under ``<list_root>/fss/fold0/``:
``train_min<N>_<rule>.json`` (all three ``novel_in_train`` rules: one class per image, so they coincide),
``val_min<N>.json`` (validation classes: stage-2 model selection), ``test_min<N>.json`` (test classes: test.py),
``base_train_min<N>.json`` / ``base_val_min<N>.json`` (stage 1: the training classes, each class's last pair held
out for validation). A pair counts when its mask has at least N foreground pixels; unreadable pairs and pairs whose
image and mask sizes differ are left out and reported.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from util.errors import UserError
from util.image_io import binary_object, read_grey

NUM_CLASSES = 1000
SPLIT_SIZES = {"train": 520, "val": 240, "test": 240}
SPLIT_SEED = 0
PUBLISHED = Path(__file__).resolve().parent.parent / "lists" / "published"
TEST_SPLIT_FILE = PUBLISHED / "fss_test.txt"
WORD_FIXES_FILE = PUBLISHED / "fss_word_fixes.tsv"
HSNET_SPLIT_FILES = {"train": "trn.txt", "val": "val.txt", "test": "test.txt"}


def split_ids() -> dict[str, range]:
    """Class ids of each split: train 1..520, val 521..760, test 761..1000."""
    ids, start = {}, 1
    for split, size in SPLIT_SIZES.items():
        ids[split] = range(start, start + size)
        start += size
    return ids


def read_name_list(path: Path) -> list[str]:
    """Class names, one a line (blank lines skipped)."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read class-name list {path} ({err})") from None


def splits_dir(list_root: str | Path) -> Path:
    """Where the class split is written: ``<list_root>/fss/splits``."""
    return Path(list_root) / "fss" / "splits"


def class_names(list_root: str | Path) -> tuple[str, ...]:
    """The 1,000 names in class-id order (id c is ``names[c - 1]``), from the split prepare_fss wrote."""
    folder = splits_dir(list_root)
    if not folder.is_dir():
        raise UserError(f"{folder}: no FSS-1000 class split; write it with: python -m tools.prepare_fss "
                        f"--data-root <FSS-1000 folder> --list-root {list_root}")
    names: list[str] = []
    for split, size in SPLIT_SIZES.items():
        part = read_name_list(folder / f"{split}.txt")
        if len(part) != size:
            raise UserError(f"{folder / f'{split}.txt'}: {len(part)} names, expected {size}; rerun python -m tools.prepare_fss")
        names.extend(sorted(part))
    return tuple(names)


# ---------------------------------------------------------------- masks and class-name words

def read_binary_mask(path: str | Path) -> np.ndarray:
    """A FSS-1000 mask as uint8 0/1 ``[H, W]`` on its stored pixel grid, by the black/white mask rule of
    :func:`util.image_io.binary_object` (foreground where its grey level is at least 128)."""
    return binary_object(read_grey(path))


def read_word_fixes(path: Path = WORD_FIXES_FILE) -> dict[str, tuple[str, ...]]:
    """``word -> replacement words`` from a tab-separated fixes file ('#' comments)."""
    fixes = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].rstrip()
        if not line:
            continue
        word, sep, replacement = line.partition("\t")
        if not sep or not replacement.split():
            raise UserError(f"{path}:{number}: expected 'word<TAB>replacement words'")
        fixes[word.strip()] = tuple(replacement.split())
    return fixes


def name_words(name: str, vocabulary: set[str], fixes: dict[str, tuple[str, ...]]) -> tuple[tuple[str, ...], list[str]]:
    """Known words for one class folder name and the rules that were needed (empty: the name's own words).

    Lower-case, "'s" dropped, split on underscores; then each word not in ``vocabulary``: the fixes table, else
    trailing digits split off (``earphone1`` -> earphone), else split into two known words of at least three
    letters (``flyingfish`` -> flying fish). A word none of these explain stops with a UserError.
    """
    words: list[str] = []
    rules: list[str] = []
    for token in re.split(r"[\s_]+", name.lower().replace("'s", "")):
        if not token or token in vocabulary:
            words.extend([token] if token else [])
            continue
        if token in fixes:
            words.extend(fixes[token])
            rules.append(f"{token} -> {' '.join(fixes[token])} (fixes table)")
            continue
        digits = re.fullmatch(r"([a-z]+?)(\d+)", token)
        if digits and digits.group(1) in vocabulary:
            kept = [digits.group(1)] + ([digits.group(2)] if digits.group(2) in vocabulary and len(digits.group(2)) > 1 else [])
            words.extend(kept)
            rules.append(f"{token} -> {' '.join(kept)} (digits split off)")
            continue
        halves = [(token[:i], token[i:]) for i in range(3, len(token) - 2)
                  if token[:i] in vocabulary and token[i:] in vocabulary]
        if halves:
            first, second = max(halves, key=lambda pair: min(len(pair[0]), len(pair[1])))
            words.extend([first, second])
            rules.append(f"{token} -> {first} {second} (split into two known words)")
            continue
        raise UserError(f"class '{name}': no vector for '{token}' and no rule explains it; add a line "
                        f"'{token}<TAB>known words' to {WORD_FIXES_FILE} (or a copy given with --word-fixes)")
    return tuple(words), rules
