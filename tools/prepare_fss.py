"""Prepare FSS-1000 (layout, split, lists and class vectors: :mod:`util.fss1000`, :mod:`util.prepare_fss`): check every class folder and pair,
write the class split, the fold-0 lists and the class-name vectors GIM reads, and report what needed attention.

    python -m tools.prepare_fss --data-root data/fss [--list-root lists] [--splits HSNET/data/splits/fss]
                                [--min-class-pixels 1] [--source glove50 | WORD_VECTOR_FILE --name NAME]

Writes ``<list_root>/fss/splits/``, ``<list_root>/fss/fold0/*.json``, ``<list_root>/fss/class_words.tsv`` (the words
each class name became) and ``<list_root>/fss/fss_<name>.npy`` + ``.json`` (config key ``embedding_file``).
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
from util.atomic import write_bytes_atomic
from util.embed_classes import default_name, write_embeddings
from util.embeddings import DEFAULT_SOURCE_NAME
from util.errors import UserError, cli_entry

SHOWN_PROBLEMS = 10


@cli_entry
def main(argv: Sequence[str] | None = None) -> Path:
    """Command line; returns the embedding file written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True, help="the folder holding the 1,000 class folders (config key data_root)")
    parser.add_argument("--list-root", default="lists", help="output root (config key list_root, default lists)")
    parser.add_argument("--splits", default=None, help="folder with HSNet's trn.txt, val.txt, test.txt (default: "
                                                       "the published test classes, the rest divided by a fixed seed)")
    parser.add_argument("--min-class-pixels", type=int, default=1, help="config key min_class_pixels (default 1)")
    parser.add_argument("--source", default=DEFAULT_SOURCE_NAME, help="glove50 | a word2vec/GloVe/fastText vector file")
    parser.add_argument("--name", default=None, help="embedding name: fss_<name>.npy (default from --source)")
    parser.add_argument("--reader", default="auto", choices=("auto", "gensim", "builtin"), help="vector-file reader")
    parser.add_argument("--word-fixes", default=str(fss1000.WORD_FIXES_FILE), help="word<TAB>known words table")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 8)")
    args = parser.parse_args(argv)
    if args.min_class_pixels < 1:
        raise UserError(f"--min-class-pixels must be >= 1, got {args.min_class_pixels}")
    start = time.perf_counter()
    data_root, out = Path(args.data_root), Path(args.list_root) / "fss"
    found = prepare_fss.scan(data_root, args.workers or min(os.cpu_count() or 1, 8))
    split, source = prepare_fss.choose_split(sorted(found.pairs), Path(args.splits) if args.splits else None)
    prepare_fss.write_split(args.list_root, split, source)
    lists = prepare_fss.write_lists(found, split, args.list_root, args.min_class_pixels)

    names = fss1000.class_names(args.list_root)
    fixes = fss1000.read_word_fixes(Path(args.word_fixes))
    matrix, rows, rules = prepare_fss.embed_class_names(names, args.source, args.reader, fixes)
    command = shlex.join(["python", "-m", "tools.prepare_fss", *(sys.argv[1:] if argv is None else argv)])
    embedding = write_embeddings(out, "fss", args.name or default_name(args.source), matrix, rows, args.source,
                                 command, recipe=prepare_fss.EMBEDDING_RECIPE)
    table = ["id\tname\twords\tmapping"] + [f"{row.class_id}\t{row.name}\t{' '.join(row.words)}\t"
                                            f"{'; '.join(rules.get(row.name, []))}" for row in rows[1:]]
    write_bytes_atomic(out / "class_words.tsv", ("\n".join(table) + "\n").encode("utf-8"))

    pairs = sum(len(p) for p in found.pairs.values())
    empty = sum(1 for p in found.pairs.values() for *_, pixels in p if pixels < args.min_class_pixels)
    print(f"prepare_fss: {len(found.pairs)} classes, {pairs} pairs ({empty} with fewer than "
          f"{args.min_class_pixels} foreground pixels left out of the lists); split: {source}")
    for problem in found.problems[:SHOWN_PROBLEMS]:
        print(f"  left out: {problem}")
    if len(found.problems) > SHOWN_PROBLEMS:
        print(f"  ... {len(found.problems) - SHOWN_PROBLEMS} more left out")
    print(f"class names: {len(rules)} of {len(names)} needed mapping to known words ({out / 'class_words.tsv'})")
    print(f"wrote {len(lists)} lists under {out / 'fold0'}, {embedding} ({matrix.shape[0]} x {matrix.shape[1]}) "
          f"in {time.perf_counter() - start:.1f} s")
    return embedding


if __name__ == "__main__":
    main()
