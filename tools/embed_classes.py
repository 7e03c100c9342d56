"""Build class-name embeddings for GIM: ``embeddings/<dataset>_<name>.npy`` (+ ``.json`` with names and recipe).

The recipe and the sources are :mod:`util.embed_classes`. Examples:

    python -m tools.embed_classes --dataset pascal --source glove50
    python -m tools.embed_classes --dataset pascal --source GoogleNews-vectors-negative300.bin.gz --name word2vec300
    python -m tools.embed_classes --dataset synth --names data/synth/class_names.txt
    python -m tools.embed_classes --dataset fss                     # FSS-1000, the published split's class order
    python -m tools.embed_classes --dataset fss --list-root lists --out-dir lists/fss   # the split prepared there
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from util.classes import DATASETS
from util.embed_classes import BACKGROUND_WORD, build_embeddings, default_name, names_for, word_rule, write_embeddings
from util.embeddings import DEFAULT_SOURCE_NAME, EMBEDDINGS_DIR
from util.errors import UserError, cli_entry


@cli_entry
def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: build and write one embedding file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="details: README, section 'Class-name embeddings'")
    parser.add_argument("--dataset", required=True,
                        help=f"{'|'.join(DATASETS)} (names from util/classes.py; fss: util/fss1000.py), or any "
                             "label with --names")
    parser.add_argument("--source", default=DEFAULT_SOURCE_NAME,
                        help="glove50 | path to a word2vec/GloVe/fastText vector file | sentence:MODEL")
    parser.add_argument("--name", default=None, help="output name: <out-dir>/<dataset>_<name>.npy (default from --source)")
    parser.add_argument("--names", default=None, help="class names file, one a line (line i = class id i+1)")
    parser.add_argument("--out-dir", default=str(EMBEDDINGS_DIR), help="output folder (default: embeddings/)")
    parser.add_argument("--background-word", default=BACKGROUND_WORD, help="word(s) embedded as row 0")
    parser.add_argument("--reader", default="auto", choices=("auto", "gensim", "builtin"),
                        help="vector-file reader: gensim if importable (auto), or the built-in streaming reader")
    parser.add_argument("--list-root", default=None,
                        help="fss: the class order of the split prepared under this list root (default: the published split)")
    parser.add_argument("--class-words", default=None, help="fss: the class-word table (default: "
                                                            "lists/published/fss_class_words.tsv)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.dataset):
        raise UserError(f"--dataset '{args.dataset}': use letters, digits, '_', '.', '-' only")
    if args.dataset != "fss" and (args.list_root or args.class_words):
        raise UserError("--list-root and --class-words are for --dataset fss")
    names = names_for(args.dataset, args.names, args.list_root)
    rule = word_rule(args.dataset, args.class_words, args.background_word)
    matrix, rows = build_embeddings(names, args.source, args.reader, args.background_word, rule)
    name = args.name or default_name(args.source)
    command = shlex.join(["python", "-m", "tools.embed_classes", *(sys.argv[1:] if argv is None else argv)])
    path = write_embeddings(args.out_dir, args.dataset, name, matrix, rows, args.source, command, args.background_word,
                            rule.recipe)
    print(f"wrote {path} and {path.with_suffix('.json').name}: {matrix.shape[0]} rows x {matrix.shape[1]} dims")
    return path


if __name__ == "__main__":
    main()
