"""Prepare FSS-1000 (what and where: :mod:`util.data.benchmarks.fss1000`): check the class folders against the class split and
every pair, then write the class split, the fold-0 lists and, for a split other than the published one, the
class-name vectors in its class order. Everything is checked before anything is written.

Command line:

    python -m tools.prepare_fss --data-root data/fss [--list-root lists] [--split published | seeded]
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tools.embed_classes import build_embeddings, word_rule, write_embeddings
from tools.make_lists import write_list
from util.common.atomic import write_bytes_atomic
from util.common.errors import UserError, cli_entry, first_few
from util.data.benchmarks import fss1000
from util.data.benchmarks.fss1000 import (
    HSNET_SPLIT_FILES,
    NUM_CLASSES,
    SOURCE_FILE,
    SPLIT_SEED,
    SPLIT_SIZES,
    SPLIT_SOURCES,
    names_in_id_order,
    published_split,
    read_binary_mask,
    read_name_list,
    split_ids,
    splits_dir,
)
from util.data.embeddings import DEFAULT_SOURCE_NAME
from util.data.image_io import image_size
from util.data.lists import LIST_FORMAT, NOVEL_IN_TRAIN, fold_list_path

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


def scan(data_root: Path, names: Sequence[str], workers: int) -> Scan:
    """Check every pair of the class folders ``names`` (in parallel)."""
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

def _folder_mismatch(data_root: Path, expected: set[str], folders: set[str], what: str) -> str | None:
    """One line naming the class folders ``what`` lists that ``data_root`` lacks and the ones it has beyond them."""
    missing, extra = sorted(expected - folders), sorted(folders - expected)
    if not missing and not extra:
        return None
    parts = ([f"{len(missing)} {what} classes have no folder ({first_few(missing)})"] if missing else []) + \
            ([f"{len(extra)} folders are not {what} classes ({first_few(extra)})"] if extra else [])
    return f"{data_root}: {'; '.join(parts)}"


def _read_hsnet_files(folder: Path) -> dict[str, list[str]]:
    """HSNet-format lists (trn.txt, val.txt, test.txt) from ``folder``, checked for their sizes and overlaps."""
    split, problems = {}, []
    for part, file in HSNET_SPLIT_FILES.items():
        path = folder / file
        if not path.is_file():
            raise UserError(f"--splits {folder}: {file} not found (HSNet's data/splits/fss/ holds trn.txt, val.txt, test.txt)")
        split[part] = read_name_list(path)
        if len(split[part]) != SPLIT_SIZES[part]:
            problems.append(f"{file} has {len(split[part])} names, expected {SPLIT_SIZES[part]}")
    repeated = sorted(name for name, count in Counter(n for names in split.values() for n in names).items() if count > 1)
    if repeated:
        problems.append(f"{len(repeated)} names listed twice ({first_few(repeated)}); each class is in exactly one list")
    if problems:
        raise UserError(f"--splits {folder}: {'; '.join(problems)}")
    return split


def choose_split(data_root: Path, folders: Sequence[str], source: str,
                 hsnet_splits: Path | None = None) -> tuple[dict[str, list[str]], str]:
    """The class split (train/val/test name lists, as given) and its source (:data:`util.data.benchmarks.fss1000.SPLIT_SOURCES`),
    checked against the class folders found.

    ``published``: the committed split, whose 1,000 names must be the folders. ``files``: HSNet-format lists in
    ``hsnet_splits``, with the published test classes, naming every folder (source ``published`` when they are the
    published split). ``seeded``: the published test classes and the other folders divided by ``SPLIT_SEED``.
    Missing and extra folders are reported together in one line.
    """
    published = published_split()
    on_disk = set(folders)
    if source == "files":
        split = _read_hsnet_files(Path(hsnet_splits))
        if set(split["test"]) != set(published["test"]):
            raise UserError(f"{Path(hsnet_splits) / 'test.txt'} is not the published test split "
                            f"({len(set(split['test']) - set(published['test']))} names differ); FSS-1000's test "
                            "classes are fixed")
        mismatch = _folder_mismatch(data_root, {n for names in split.values() for n in names}, on_disk,
                                    f"--splits {hsnet_splits}")
        if mismatch:
            raise UserError(mismatch)
        same = all(set(split[part]) == set(published[part]) for part in SPLIT_SIZES)
        return split, "published" if same else "files"
    if source == "published":
        mismatch = _folder_mismatch(data_root, {n for names in published.values() for n in names}, on_disk,
                                    "published")
        if mismatch:
            raise UserError(f"{mismatch}; pass the folder holding the unpacked FSS-1000, or --split seeded for a "
                            "copy whose class folders have other names")
        return published, "published"
    if source != "seeded":
        raise UserError(f"--split {source!r}: choose one of published, seeded (or give HSNet-format lists with --splits)")
    problems = [f"{len(folders)} class folders with .jpg images, FSS-1000 has {NUM_CLASSES}"] \
        if len(folders) != NUM_CLASSES else []
    absent = sorted(set(published["test"]) - on_disk)
    if absent:
        problems.append(f"{len(absent)} of the 240 published test classes have no folder ({first_few(absent)})")
    if problems:
        raise UserError(f"{data_root}: {'; '.join(problems)}; --split seeded needs all 1,000 class folders, "
                        "the published test classes among them")
    rest = sorted(on_disk - set(published["test"]))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rest))
    train = sorted(rest[i] for i in order[:SPLIT_SIZES["train"]])
    val = sorted(rest[i] for i in order[SPLIT_SIZES["train"]:])
    return {"train": train, "val": val, "test": list(published["test"])}, "seeded"


def write_split(list_root: str | Path, split: dict[str, list[str]], source: str, origin: str = "") -> Path:
    """Write ``<list_root>/fss/splits/{train,val,test}.txt`` (sorted: line i is the part's i-th class id) and
    ``source.txt`` (the source, then what it means and ``origin``); returns the folder."""
    folder = splits_dir(list_root)
    for name, names in split.items():
        write_bytes_atomic(folder / f"{name}.txt", ("\n".join(sorted(names)) + "\n").encode("utf-8"))
    detail = SPLIT_SOURCES[source] + (f": {origin}" if origin else "")
    write_bytes_atomic(folder / SOURCE_FILE, f"{source}\n{detail}\n".encode("utf-8"))
    return folder


# ---------------------------------------------------------------- lists

LIST_SPLITS = {**{f"train_{rule}": "train" for rule in NOVEL_IN_TRAIN}, "val": "val", "base_val": "train",
               "test": "test", "base_train": "train"}  # the class split each of ALL_SUBSETS draws from


def _listed(subset: str, position: int, count: int) -> bool:
    """Whether a class's pair ``position`` (of ``count`` counted pairs) is in ``subset``: stage 1 validates on each
    class's last pair (a class with one pair only trains) and trains on the others; the other lists hold all."""
    if subset == "base_val":
        return count > 1 and position == count - 1
    if subset == "base_train":
        return count == 1 or position < count - 1
    return True


def write_lists(found: Scan, split: dict[str, list[str]], list_root: str | Path, min_class_pixels: int) -> list[Path]:
    """Write the fold-0 lists (:mod:`util.data.benchmarks.fss1000`) from a scan and a class split; returns the files written."""
    ids = {name: class_id for class_id, name in enumerate(names_in_id_order(split), start=1)}
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


# ---------------------------------------------------------------- the whole preparation

@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` did: the scan, the split's source, the lists and the class-vector file it wrote (None:
    the published split, whose vectors are committed in ``embeddings/fss_glove50.npy``)."""

    found: Scan
    source: str
    lists: list[Path]
    embedding: Path | None


def prepare(data_root: Path, list_root: str | Path, source: str, hsnet_splits: Path | None, min_class_pixels: int,
            workers: int, class_words_file: Path | None, command: str) -> Prepared:
    """Check the layout and the split against the folders, the class names (a split other than the published one:
    every name must resolve to GloVe words, all unknown names reported in one line) and every pair; only then write
    the split, the lists and (not for the published split) ``<list_root>/fss/fss_glove50.npy`` + ``.json``."""
    if min_class_pixels < 1:
        raise UserError(f"--min-class-pixels must be >= 1, got {min_class_pixels}")
    folders = class_folders(data_root)
    split, source = choose_split(data_root, folders, "files" if hsnet_splits is not None else source, hsnet_splits)
    if source == "published" and class_words_file is not None:
        raise UserError("--class-words: the published split's class vectors are committed (embeddings/fss_glove50.npy); "
                        "the table is for the vectors of --split seeded or --splits lists")
    vectors = None
    if source != "published":
        rule = word_rule("fss", class_words_file)
        vectors = (*build_embeddings(names_in_id_order(split), DEFAULT_SOURCE_NAME, rule=rule), rule.recipe)
    found = scan(data_root, folders, workers)
    write_split(list_root, split, source, str(Path(hsnet_splits).resolve()) if source == "files" else "")
    lists = write_lists(found, split, list_root, min_class_pixels)
    embedding = None
    if vectors is not None:
        matrix, rows, recipe = vectors
        embedding = write_embeddings(Path(list_root) / "fss", "fss", DEFAULT_SOURCE_NAME, matrix, rows,
                                     DEFAULT_SOURCE_NAME, command, recipe=recipe)
    return Prepared(found, source, lists, embedding)


SHOWN_PROBLEMS = 10


@cli_entry
def main(argv: Sequence[str] | None = None) -> Prepared:
    """Command line; returns what was prepared."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True, help="the folder holding the 1,000 class folders (config key data_root)")
    parser.add_argument("--list-root", default="lists", help="output root (config key list_root, default lists)")
    parser.add_argument("--split", default="published", choices=("published", "seeded"),
                        help="published: HSNet's split, committed in lists/published/fss_classes (default); seeded: "
                             "the published test classes, the other 760 folders divided by a fixed seed")
    parser.add_argument("--splits", default=None, help="a folder with HSNet-format trn.txt, val.txt, test.txt instead")
    parser.add_argument("--min-class-pixels", type=int, default=1, help="config key min_class_pixels (default 1)")
    parser.add_argument("--class-words", default=None,
                        help="class-word table for the vectors of a split other than the published one (default "
                             "lists/published/fss_class_words.tsv)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 8)")
    args = parser.parse_args(argv)
    if args.splits and args.split != "published":
        raise UserError("give either --split seeded or --splits DIR, not both")
    start = time.perf_counter()
    command = shlex.join(["python", "-m", "tools.prepare_fss", *(sys.argv[1:] if argv is None else argv)])
    done = prepare(Path(args.data_root), args.list_root, args.split,
                               Path(args.splits) if args.splits else None, args.min_class_pixels,
                               args.workers or min(os.cpu_count() or 1, 8),
                               Path(args.class_words) if args.class_words else None, command)
    found = done.found
    pairs = sum(len(p) for p in found.pairs.values())
    empty = sum(1 for p in found.pairs.values() for *_, pixels in p if pixels < args.min_class_pixels)
    print(f"prepare_fss: {len(found.pairs)} classes, {pairs} pairs ({empty} with fewer than {args.min_class_pixels} "
          f"foreground pixels left out of the lists); split {done.source}: {fss1000.SPLIT_SOURCES[done.source]}")
    for problem in found.problems[:SHOWN_PROBLEMS]:
        print(f"  left out: {problem}")
    if len(found.problems) > SHOWN_PROBLEMS:
        print(f"  ... {len(found.problems) - SHOWN_PROBLEMS} more left out")
    out = Path(args.list_root) / "fss"
    if done.embedding is None:
        vectors = "class vectors: embeddings/fss_glove50.npy (committed, the config default)"
    else:
        vectors = (f"class vectors of this split's class order: {done.embedding}; train and test with "
                   f"embedding_file {done.embedding}")
    print(f"wrote {len(done.lists)} lists under {out / 'fold0'} in {time.perf_counter() - start:.1f} s; {vectors}")
    return done


if __name__ == "__main__":
    main()
