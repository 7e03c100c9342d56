"""Prepare FSS-1000 (layout, split, lists and class vectors: :mod:`util.fss1000`, :mod:`util.prepare_fss`): check the
class folders against the class split and every pair, then write the split and the fold-0 lists; nothing is written
unless every check passes.

    python -m tools.prepare_fss --data-root data/fss [--list-root lists] [--split published | seeded]
                                [--splits HSNET/data/splits/fss] [--min-class-pixels 1] [--class-words FILE]

Writes ``<list_root>/fss/splits/`` and ``<list_root>/fss/fold0/*.json``. The published split's class vectors are
committed (``embeddings/fss_glove50.npy``, the config default); for another split it also writes
``<list_root>/fss/fss_glove50.npy`` + ``.json`` (same recipe, that split's class order: config key ``embedding_file``).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from util import fss1000, prepare_fss
from util.errors import UserError, cli_entry

SHOWN_PROBLEMS = 10


@cli_entry
def main(argv: Sequence[str] | None = None) -> prepare_fss.Prepared:
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
    done = prepare_fss.prepare(Path(args.data_root), args.list_root, args.split,
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
