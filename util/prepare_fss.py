"""Prepare FSS-1000 (what and where: :mod:`util.fss1000`): check the class folders and pairs, choose and write the
class split, write the fold-0 lists, and embed the class names for GIM.

Command line: ``python -m tools.prepare_fss`` (:mod:`tools.prepare_fss`).
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from util.atomic import write_bytes_atomic
from util.embed_classes import BACKGROUND_WORD, ClassRow, embed_rows, file_vectors, glove50_vectors
from util.embeddings import DEFAULT_SOURCE_NAME
from util.errors import UserError
from util.fss1000 import (HSNET_SPLIT_FILES, NUM_CLASSES, SPLIT_SEED, SPLIT_SIZES, TEST_SPLIT_FILE, name_words,
                          read_binary_mask, read_name_list, split_ids, splits_dir)
from util.fss_lists import LIST_FORMAT, NOVEL_IN_TRAIN, fold_list_path
from util.image_io import image_size
from util.make_lists import write_list


# ---------------------------------------------------------------- layout

def class_folders(data_root: Path) -> list[str]:
    """Sorted names of the folders under ``data_root`` that hold at least one ``.jpg``."""
    if not data_root.is_dir():
        raise UserError(f"data root '{data_root}' does not exist; pass the folder holding the 1,000 FSS-1000 class folders")
    return sorted(entry.name for entry in os.scandir(data_root)
                  if entry.is_dir() and any(name.endswith(".jpg") for name in os.listdir(entry.path)))


def _number(name: str) -> int:
    stem = name.rsplit(".", 1)[0]
    return int(stem) if stem.isdigit() else 1 << 30


def class_pairs(data_root: Path, name: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The ``(image, mask)`` pairs of one class folder (root-relative, by image number) and the problems found."""
    files = set(os.listdir(data_root / name))
    pairs, problems = [], []
    for image in sorted((f for f in files if f.endswith(".jpg")), key=lambda f: (_number(f), f)):
        mask = image[:-4] + ".png"
        if mask in files:
            pairs.append((f"{name}/{image}", f"{name}/{mask}"))
        else:
            problems.append(f"{name}/{image}: no mask {mask}")
    return pairs, problems


def _check_pair(job: tuple[str, str, str]) -> tuple[int, str | None]:
    """Foreground pixels of one pair, or a problem (unreadable file, image and mask sizes differ)."""
    root, image, mask = job
    try:
        size = image_size(os.path.join(root, image))
        binary = read_binary_mask(os.path.join(root, mask))
    except UserError as err:
        return 0, str(err)
    if binary.shape != size:
        return 0, f"{image}: image {size[0]}x{size[1]} but mask {binary.shape[0]}x{binary.shape[1]}"
    return int(binary.sum()), None


@dataclass(frozen=True)
class Scan:
    """What prepare found: each class's usable pairs with their foreground pixels, and every problem."""

    pairs: dict[str, list[tuple[str, str, int]]]
    problems: list[str]


def scan(data_root: Path, workers: int) -> Scan:
    """Check every class folder and pair (in parallel); the folder count must be FSS-1000's."""
    names = class_folders(data_root)
    if len(names) != NUM_CLASSES:
        raise UserError(f"{data_root}: {len(names)} class folders with .jpg images, FSS-1000 has {NUM_CLASSES}; "
                        "pass the folder that holds all of them (unpacked FSS-1000)")
    problems: list[str] = []
    jobs, owners = [], []
    for name in names:
        pairs, missing = class_pairs(data_root, name)
        problems.extend(missing)
        for image, mask in pairs:
            jobs.append((str(data_root), image, mask))
            owners.append(name)
    if workers == 1:
        checked = [_check_pair(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            checked = list(pool.map(_check_pair, jobs, chunksize=64))
    found: dict[str, list[tuple[str, str, int]]] = {name: [] for name in names}
    for (_, image, mask), owner, (pixels, problem) in zip(jobs, owners, checked):
        if problem is None:
            found[owner].append((image, mask, pixels))
        else:
            problems.append(problem)
    return Scan(found, problems)


# ---------------------------------------------------------------- class split

def choose_split(names: Sequence[str], hsnet_splits: Path | None) -> tuple[dict[str, list[str]], str]:
    """The class split (train/val/test name lists) and a line saying where it came from.

    With ``hsnet_splits`` (a folder with HSNet's trn.txt, val.txt, test.txt) those lists, checked; otherwise the
    published test classes and the other 760 divided with ``SPLIT_SEED``.
    """
    published = read_name_list(TEST_SPLIT_FILE)
    on_disk = set(names)
    absent = sorted(set(published) - on_disk)
    if absent:
        raise UserError(f"{len(absent)} of the {len(published)} published test classes ({TEST_SPLIT_FILE.name}) have "
                        f"no folder in the data root, e.g. {absent[:3]}; is it the full FSS-1000?")
    if hsnet_splits is not None:
        split = {}
        for name, file in HSNET_SPLIT_FILES.items():
            path = Path(hsnet_splits) / file
            if not path.is_file():
                raise UserError(f"--splits {hsnet_splits}: {file} not found (HSNet's data/splits/fss/ holds trn.txt, val.txt, test.txt)")
            split[name] = sorted(read_name_list(path))
            unknown = sorted(set(split[name]) - on_disk)
            if len(split[name]) != SPLIT_SIZES[name] or unknown:
                raise UserError(f"{path}: {len(split[name])} names (expected {SPLIT_SIZES[name]}), "
                                f"{len(unknown)} without a class folder {unknown[:3]}")
        if set(split["test"]) != set(published):
            raise UserError(f"{hsnet_splits / 'test.txt'} is not the published test split ({TEST_SPLIT_FILE})")
        if len(set().union(*map(set, split.values()))) != NUM_CLASSES:
            raise UserError(f"--splits {hsnet_splits}: the three lists overlap; each class must be in exactly one")
        return split, f"HSNet's lists from {Path(hsnet_splits).resolve()}"
    rest = sorted(on_disk - set(published))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rest))
    train = sorted(rest[i] for i in order[:SPLIT_SIZES["train"]])
    val = sorted(rest[i] for i in order[SPLIT_SIZES["train"]:])
    return ({"train": train, "val": val, "test": sorted(published)},
            f"published test classes ({TEST_SPLIT_FILE.name}); the other {len(rest)} sorted and divided by "
            f"numpy.random.default_rng({SPLIT_SEED}).permutation: the first {SPLIT_SIZES['train']} train, the rest "
            "val (not HSNet's division: give --splits for that)")


def write_split(list_root: str | Path, split: dict[str, list[str]], source: str) -> Path:
    """Write ``<list_root>/fss/splits/{train,val,test}.txt`` and ``source.txt``; returns the folder."""
    folder = splits_dir(list_root)
    folder.mkdir(parents=True, exist_ok=True)
    for name, names in split.items():
        write_bytes_atomic(folder / f"{name}.txt", ("\n".join(names) + "\n").encode("utf-8"))
    write_bytes_atomic(folder / "source.txt", (source + "\n").encode("utf-8"))
    return folder


# ---------------------------------------------------------------- lists

LIST_SPLITS = {**{f"train_{rule}": "train" for rule in NOVEL_IN_TRAIN}, "val": "val", "base_val": "train",
               "test": "test", "base_train": "train"}  # the class split each of ONE_CLASS_SUBSETS draws from


def _listed(subset: str, position: int, count: int) -> bool:
    """Whether a class's pair ``position`` (of ``count`` counted pairs) is in ``subset``: stage 1 validates on each
    class's last pair (a class with one pair only trains) and trains on the others; the other lists hold all."""
    if subset == "base_val":
        return count > 1 and position == count - 1
    if subset == "base_train":
        return count == 1 or position < count - 1
    return True


def write_lists(found: Scan, split: dict[str, list[str]], list_root: str | Path, min_class_pixels: int) -> list[Path]:
    """Write the fold-0 lists (:mod:`util.fss1000`) from a scan and a class split; returns the files written."""
    ids = {name: class_id for part, id_range in split_ids().items() for name, class_id in zip(split[part], id_range)}
    written = []
    for subset, part in LIST_SPLITS.items():
        items = []
        for name in split[part]:
            counted = [(image, mask) for image, mask, pixels in found.pairs[name] if pixels >= min_class_pixels]
            items.extend((image, mask, (ids[name],), (ids[name],))
                         for position, (image, mask) in enumerate(counted) if _listed(subset, position, len(counted)))
        path = fold_list_path(list_root, "fss", 0, subset, min_class_pixels)
        header = {"format": LIST_FORMAT, "dataset": "fss", "fold": 0, "split_style": None, "subset": subset,
                  "min_class_pixels": min_class_pixels, "classes": list(split_ids()[part])}
        write_list(path, header, sorted(items))
        written.append(path)
    return written


def candidate_words(names: Sequence[str], fixes: dict[str, tuple[str, ...]]) -> set[str]:
    """Every word :func:`name_words` may look up for ``names``: the tokens, the fixes, digit and two-word splits."""
    words = {w for replacement in fixes.values() for w in replacement}
    for name in names:
        for token in re.split(r"[\s_]+", name.lower().replace("'s", "")):
            words.add(token)
            digits = re.fullmatch(r"([a-z]+?)(\d+)", token)
            if digits:
                words.update(digits.groups())
            words.update(part for i in range(3, len(token) - 2) for part in (token[:i], token[i:]))
    words.discard("")
    return words


def embed_class_names(names: Sequence[str], source: str, reader: str, fixes: dict[str, tuple[str, ...]]):
    """GIM's class vectors for ``names`` (id order) with the words each name became: ``(matrix, rows, rules)``,
    ``rules[name]`` listing the mappings a name needed (names absent needed none)."""
    wanted = candidate_words(names, fixes) | {BACKGROUND_WORD}
    vectors = glove50_vectors(wanted) if source == DEFAULT_SOURCE_NAME else file_vectors(source, wanted, reader)
    vocabulary = set(vectors)
    rows, rules = [ClassRow(0, "background", (BACKGROUND_WORD,))], {}
    for class_id, name in enumerate(names, start=1):
        words, needed = name_words(name, vocabulary, fixes)
        rows.append(ClassRow(class_id, name, words))
        if needed:
            rules[name] = needed
    return embed_rows(rows, vectors, source), rows, rules


EMBEDDING_RECIPE = ("FSS-1000 folder names: lower-case, \"'s\" dropped, split on underscores; a word not in the "
                    "vocabulary replaced from lists/published/fss_word_fixes.tsv, else its trailing digits split off, "
                    "else split into two known words (each row's words are listed); mean of the word vectors; "
                    "L2-normalise; row 0 = the normalised vector of 'background'")
