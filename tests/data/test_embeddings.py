"""Class-name embeddings: the recipe, the word-vector readers, the CLI and the loader (tiny hand-written files)."""
from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from tools.embed_classes import main
from util.data.registry import class_names, num_classes
from util.data.benchmarks.pascal import PASCAL_CLASSES
from util.data.benchmarks.synth import SYNTH_CLASSES
from tools.embed_classes import (
    FASTTEXT_BIN_MAGIC, build_embeddings, default_name, file_vectors, name_words, read_names_file,
)
from util.data.embeddings import default_embedding_file, load_class_embeddings
from util.common.errors import UserError

TINY_VECTORS = {
    "background": [0.0, 0.0, 3.0],
    "cat": [2.0, 0.0, 0.0],
    "hot": [1.0, 0.0, 0.0],
    "dog": [0.0, 2.0, 0.0],
    "potted": [1.0, 1.0, 1.0],
    "plant": [-1.0, 1.0, 3.0],
    "traffic": [0.5, -0.25, 0.125],
}


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def write_text(path, vectors: dict, header: bool, newline_at_end: bool = True) -> None:
    """GloVe text (no header) or word2vec/fastText text (``count dim`` header)."""
    dim = len(next(iter(vectors.values())))
    lines = [f"{len(vectors)} {dim}"] if header else []
    lines += [word + " " + " ".join(repr(float(x)) for x in vec) for word, vec in vectors.items()]
    text = "\n".join(lines) + ("\n" if newline_at_end else "")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(text.encode("utf-8"))


def write_word2vec_binary(path, vectors: dict, newline_after_vector: bool = True) -> None:
    """word2vec binary: ``count dim\\n`` then ``word<space><dim float32 little-endian>[\\n]`` per word."""
    dim = len(next(iter(vectors.values())))
    body = f"{len(vectors)} {dim}\n".encode()
    for word, vec in vectors.items():
        body += word.encode("utf-8") + b" " + np.asarray(vec, dtype="<f4").tobytes()
        body += b"\n" if newline_after_vector else b""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(body)


# ---------------------------------------------------------------- recipe

def test_name_words_lowercases_splits_and_expands_compounds():
    assert name_words("Traffic_Light") == ("traffic", "light")
    assert name_words("  potted   plant ") == ("potted", "plant")
    assert name_words("pottedplant") == ("potted", "plant")
    assert name_words("diningtable") == ("dining", "table")
    assert name_words("TVMonitor") == ("tv", "monitor")
    assert name_words("cat") == ("cat",)
    with pytest.raises(UserError, match="empty class name"):
        name_words(" _ ")


def test_recipe_mean_then_normalise_rows_in_class_id_order(tmp_path):
    path = tmp_path / "tiny.txt"
    write_text(path, TINY_VECTORS, header=False)
    matrix, rows = build_embeddings(["hot dog", "cat", "pottedplant"], str(path), reader="builtin")
    assert matrix.dtype == np.float32 and matrix.shape == (4, 3)
    assert [row.name for row in rows] == ["background", "hot dog", "cat", "pottedplant"]
    assert [row.class_id for row in rows] == [0, 1, 2, 3]
    expected = np.stack([
        unit([0, 0, 3]),                 # background word
        unit([0.5, 1.0, 0.0]),           # mean(hot, dog), not mean of unit vectors: that would be [.5, .5, 0]
        unit([1, 0, 0]),
        unit([0.0, 1.0, 2.0]),           # compound pottedplant = mean(potted, plant)
    ])
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-6)


def test_unknown_words_are_listed_in_one_error(tmp_path):
    path = tmp_path / "tiny.txt"
    write_text(path, TINY_VECTORS, header=False)
    with pytest.raises(UserError) as err:
        build_embeddings(["cat", "traffic light", "zebra"], str(path), reader="builtin")
    message = str(err.value)
    assert "the words of 2 class name(s): traffic light (light); zebra (zebra);" in message and "tiny.txt" in message
    assert "\n" not in message


def test_background_word_is_configurable(tmp_path):
    path = tmp_path / "tiny.txt"
    write_text(path, TINY_VECTORS, header=False)
    matrix, rows = build_embeddings(["cat"], str(path), reader="builtin", background_word="hot dog")
    assert rows[0].words == ("hot", "dog")
    np.testing.assert_allclose(matrix[0], unit([0.5, 1.0, 0.0]), atol=1e-6)


def test_zero_mean_vector_is_an_error(tmp_path):
    path = tmp_path / "tiny.txt"
    write_text(path, {"background": [1.0, 0.0], "up": [0.0, 1.0], "down": [0.0, -1.0]}, header=False)
    with pytest.raises(UserError, match="'up down' has norm 0"):
        build_embeddings(["up down"], str(path), reader="builtin")


# ---------------------------------------------------------------- readers

@pytest.mark.parametrize("filename,kind", [
    ("glove.txt", "text"), ("glove.txt.gz", "text"), ("vectors.vec", "header"), ("w2v.txt", "header"),
    ("w2v.bin", "binary"), ("w2v.bin.gz", "binary"), ("w2v_no_newline.bin", "binary_packed"),
])
def test_every_format_gives_the_same_vectors(tmp_path, filename, kind):
    path = tmp_path / filename
    if kind == "text":
        write_text(path, TINY_VECTORS, header=False, newline_at_end=False)
    elif kind == "header":
        write_text(path, TINY_VECTORS, header=True)
    else:
        write_word2vec_binary(path, TINY_VECTORS, newline_after_vector=kind == "binary")
    found = file_vectors(path, ["cat", "plant", "background", "missing"], reader="builtin")
    assert sorted(found) == ["background", "cat", "plant"]
    for word, vec in found.items():
        assert vec.dtype == np.float32
        np.testing.assert_array_equal(vec, np.asarray(TINY_VECTORS[word], dtype=np.float32))


def test_binary_reader_crosses_chunk_boundaries(tmp_path, monkeypatch):
    import tools.embed_classes as embed_classes

    monkeypatch.setattr(embed_classes, "READ_CHUNK_BYTES", 5)
    path = tmp_path / "w2v.bin"
    write_word2vec_binary(path, TINY_VECTORS)
    found = file_vectors(path, TINY_VECTORS, reader="builtin")
    assert {w: v.tolist() for w, v in found.items()} == TINY_VECTORS


def test_text_reader_keeps_the_first_duplicate_and_skips_phrases_with_spaces(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("cat 1 2\ncat 9 9\ncat flap 3 4 5\ndog 0 1\n", encoding="utf-8")
    found = file_vectors(path, ["cat", "dog"], reader="builtin")
    assert found["cat"].tolist() == [1.0, 2.0] and found["dog"].tolist() == [0.0, 1.0]


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        file_vectors(tmp_path / "nope.txt", ["cat"], reader="builtin")
    fasttext = tmp_path / "cc.en.300.bin"
    fasttext.write_bytes(struct.pack("<ii", FASTTEXT_BIN_MAGIC, 12) + b"\0" * 16)
    with pytest.raises(UserError, match=r"cc.en.300.bin is a fastText model"):
        file_vectors(fasttext, ["cat"], reader="builtin")
    truncated = tmp_path / "short.bin"
    write_word2vec_binary(truncated, TINY_VECTORS)
    truncated.write_bytes(truncated.read_bytes()[:-7])
    with pytest.raises(UserError, match="short.bin: truncated"):
        file_vectors(truncated, ["cat"], reader="builtin")
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 x\n", encoding="utf-8")
    with pytest.raises(UserError, match="bad.txt, line 1"):
        file_vectors(bad, ["cat"], reader="builtin")


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim not installed (optional)")
@pytest.mark.parametrize("filename", ["glove.txt", "vectors.vec", "w2v.bin"])
def test_gensim_reader_matches_builtin(tmp_path, filename):
    path = tmp_path / filename
    if filename.endswith(".bin"):
        write_word2vec_binary(path, TINY_VECTORS)
    else:
        write_text(path, TINY_VECTORS, header=filename.endswith(".vec"))
    builtin = file_vectors(path, TINY_VECTORS, reader="builtin")
    gensim = file_vectors(path, TINY_VECTORS, reader="gensim")
    assert {w: v.tolist() for w, v in gensim.items()} == {w: v.tolist() for w, v in builtin.items()}


@pytest.mark.skipif(importlib.util.find_spec("gensim") is not None, reason="gensim is installed")
def test_without_gensim_auto_falls_back_and_gensim_is_an_error(tmp_path):
    path = tmp_path / "glove.txt"
    write_text(path, TINY_VECTORS, header=False)
    assert file_vectors(path, ["cat"], reader="auto")["cat"].tolist() == TINY_VECTORS["cat"]
    with pytest.raises(UserError, match="gensim is not installed"):
        file_vectors(path, ["cat"], reader="gensim")


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is not None,
                    reason="sentence-transformers is installed")
def test_sentence_source_without_the_package_is_a_clear_error():
    with pytest.raises(UserError, match="needs sentence-transformers, which is not installed"):
        build_embeddings(["cat"], "sentence:all-MiniLM-L6-v2")


def test_default_output_names():
    assert default_name("glove50") == "glove50"
    assert default_name("/data/GoogleNews-vectors-negative300.bin.gz") == "GoogleNews-vectors-negative300"
    assert default_name("wiki.en.vec") == "wiki.en"
    assert default_name("sentence:sentence-transformers/all-MiniLM-L6-v2") == "sentence-all-MiniLM-L6-v2"


# ---------------------------------------------------------------- command line

def random_vocabulary(names, dim: int = 6) -> dict:
    words = {"background"} | {w for name in names for w in name_words(name)}
    generator = np.random.default_rng(0)
    return {w: generator.normal(size=dim).round(4).tolist() for w in sorted(words)}


def test_cli_pascal_rows_follow_class_ids_and_load(tmp_path):
    vocabulary = random_vocabulary(PASCAL_CLASSES)
    source = tmp_path / "vectors.bin"
    write_word2vec_binary(source, vocabulary)
    path = main(["--dataset", "pascal", "--source", str(source), "--name", "tiny", "--out-dir", str(tmp_path)])
    assert path == tmp_path / "pascal_tiny.npy"
    info = json.loads((tmp_path / "pascal_tiny.json").read_text())
    assert [row["name"] for row in info["rows"]] == ["background", *PASCAL_CLASSES]
    assert [row["id"] for row in info["rows"]] == list(range(num_classes("pascal") + 1))
    assert info["shape"] == [21, 6] and "vectors.bin" in info["source"] and str(tmp_path) not in info["source"]
    table = load_class_embeddings(path, "pascal")
    assert table.shape == (21, 6) and table.dtype == torch.float32
    for class_id, name in enumerate(class_names("pascal"), start=1):
        expected = unit(np.mean([vocabulary[w] for w in name_words(name)], axis=0))
        np.testing.assert_allclose(table[class_id].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(table[0].numpy(), unit(vocabulary["background"]), atol=1e-6)


def test_a_write_that_fails_midway_keeps_the_previous_table(tmp_path, monkeypatch):
    """write_embeddings goes through util.common.atomic: a crash while saving leaves the old file whole and no temporary."""
    import tools.embed_classes as embed_classes

    matrix, rows = np.ones((21, 6), np.float32), embed_classes.class_rows(PASCAL_CLASSES)
    path = embed_classes.write_embeddings(tmp_path, "pascal", "tiny", matrix, rows, "glove50", "first")
    before = path.read_bytes()

    def save_half(handle, array):
        handle.write(b"\x93NUMPY")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embed_classes.np, "save", save_half)
    with pytest.raises(OSError, match="No space left"):
        embed_classes.write_embeddings(tmp_path, "pascal", "tiny", 2 * matrix, rows, "glove50", "second")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["pascal_tiny.json",
                                                                                         "pascal_tiny.npy"]


def test_cli_names_file_for_synth(tmp_path):
    names_file = tmp_path / "class_names.txt"
    names_file.write_text("\n".join(SYNTH_CLASSES) + "\n\n", encoding="utf-8")
    assert read_names_file(names_file) == list(SYNTH_CLASSES)
    source = tmp_path / "glove.txt"
    write_text(source, random_vocabulary(SYNTH_CLASSES), header=False)
    from_file = main(["--dataset", "synth", "--source", str(source), "--names", str(names_file),
                      "--out-dir", str(tmp_path / "a")])
    built_in = main(["--dataset", "synth", "--source", str(source), "--out-dir", str(tmp_path / "b")])
    assert from_file.name == "synth_glove.npy"
    np.testing.assert_array_equal(np.load(from_file), np.load(built_in))
    assert load_class_embeddings(from_file, "synth").shape == (21, 6)


def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys):
    names_file = tmp_path / "names.txt"
    names_file.write_text("cat\n\ndog\n", encoding="utf-8")
    source = tmp_path / "glove.txt"
    write_text(source, TINY_VECTORS, header=False)
    cases = [
        (["--dataset", "pascal", "--source", str(source), "--names", str(names_file)], "blank lines [2]"),
        (["--dataset", "pascal", "--source", str(tmp_path / "none.bin")], "none.bin not found"),
        (["--dataset", "pascal", "--source", str(source), "--out-dir", str(tmp_path)], "no vector for"),
        (["--dataset", "nope", "--source", str(source)], "unknown dataset 'nope'"),
    ]
    names_file_short = tmp_path / "short.txt"
    names_file_short.write_text("cat\ndog\n", encoding="utf-8")
    cases.append((["--dataset", "pascal", "--names", str(names_file_short), "--source", str(source)],
                  "2 names, but dataset 'pascal' has 20 classes"))
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not list(tmp_path.glob("pascal_*.npy"))


def test_custom_dataset_label_with_names_file(tmp_path):
    names_file = tmp_path / "names.txt"
    names_file.write_text("cat\nhot dog\n", encoding="utf-8")
    source = tmp_path / "glove.txt"
    write_text(source, TINY_VECTORS, header=False)
    path = main(["--dataset", "pets", "--source", str(source), "--names", str(names_file), "--out-dir", str(tmp_path)])
    assert path.name == "pets_glove.npy" and np.load(path).shape == (3, 3)


# ---------------------------------------------------------------- loader

def test_default_embedding_file_is_absolute_and_repo_relative():
    path = default_embedding_file("coco")
    assert path.is_absolute() and path.parts[-2:] == ("embeddings", "coco_glove50.npy")
    with pytest.raises(UserError, match="unknown dataset"):
        default_embedding_file("voc")


def test_loader_npy_and_reference_pkl_round_trip(tmp_path):
    table = np.random.default_rng(1).normal(size=(21, 300)).astype(np.float64)
    np.save(tmp_path / "emb.npy", table)
    with (tmp_path / "word2vec_pascal.pkl").open("wb") as handle:
        pickle.dump(table, handle)
    for name in ("emb.npy", "word2vec_pascal.pkl"):
        loaded = load_class_embeddings(tmp_path / name, "pascal")
        assert loaded.dtype == torch.float32 and loaded.shape == (21, 300)
        np.testing.assert_array_equal(loaded.numpy(), table.astype(np.float32))
    with (tmp_path / "tensor.pkl").open("wb") as handle:
        pickle.dump(torch.from_numpy(table), handle)
    with pytest.raises(UserError, match=r"tensor.pkl: refuses to load 'torch\._utils\._rebuild_tensor_v2'"):
        load_class_embeddings(str(tmp_path / "tensor.pkl"), "pascal")


@pytest.mark.parametrize("array,expected", [
    (np.zeros((20, 4)), "20 rows, but dataset 'pascal' needs 21"),
    (np.zeros(21), "must be 2-D"),
    (np.zeros((21, 4, 2)), "must be 2-D"),
    (np.full((21, 4), np.nan), "NaN/Inf in rows"),
    (np.where(np.eye(21, 4) > 0, np.inf, 0.0)[::-1], "NaN/Inf in rows [17, 18, 19, 20]"),
    (np.array([["a"] * 4] * 21), "real numbers"),
])
def test_loader_rejects_bad_arrays_naming_the_file(tmp_path, array, expected):
    path = tmp_path / "bad_table.npy"
    np.save(path, array)
    with pytest.raises(UserError) as err:
        load_class_embeddings(path, "pascal")
    assert expected in str(err.value) and "bad_table.npy" in str(err.value) and "\n" not in str(err.value)


def test_loader_file_errors(tmp_path):
    with pytest.raises(UserError, match=r"missing.npy not found.*tools.embed_classes --dataset coco"):
        load_class_embeddings(tmp_path / "missing.npy", "coco")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(UserError, match="table.csv: class embeddings must be a .npy or .pkl"):
        load_class_embeddings(tmp_path / "table.csv", "coco")
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="broken.pkl: cannot read"):
        load_class_embeddings(tmp_path / "broken.pkl", "coco")
    with (tmp_path / "dict.pkl").open("wb") as handle:
        pickle.dump({"cat": [1.0]}, handle)
    with pytest.raises(UserError, match="dict.pkl"):
        load_class_embeddings(tmp_path / "dict.pkl", "coco")


# ---------------------------------------------------------------- committed files (no package needed)

@pytest.mark.parametrize("dataset", ["pascal", "coco", "synth"])
def test_committed_files_have_one_unit_row_per_class(dataset):
    table = load_class_embeddings(None, dataset)
    assert table.shape == (num_classes(dataset) + 1, 50)
    torch.testing.assert_close(table.norm(dim=1), torch.ones(len(table)), atol=1e-5, rtol=0)
    info = json.loads(default_embedding_file(dataset).with_suffix(".json").read_text())
    assert [row["name"] for row in info["rows"]] == ["background", *class_names(dataset)]
    assert [row["words"] for row in info["rows"][1:]] == [list(name_words(n)) for n in class_names(dataset)]
    assert info["shape"] == list(table.shape)
    assert len({tuple(row) for row in table.tolist()}) == len(table)
