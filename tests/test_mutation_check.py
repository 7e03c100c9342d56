"""The mutation check (``tests/mutation_check.py``): its table is current, its texts are found wherever they are, and
every mutant is killed."""
import ast
import subprocess
import sys

import pytest

from tests.mutation_check import MUTATIONS, REPO, TABLE, StaleMutation, locate, tracked_files, tracked_texts


def test_every_mutation_matches_once_and_names_existing_tests():
    """A fast guard in the ordinary suite: a mutation whose text vanished or became ambiguous, or a kill test that was
    renamed, shows up here, not only when the slow check runs."""
    assert len(MUTATIONS) >= 16 and len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    texts = tracked_texts(REPO, tracked_files(REPO))
    for mutation in MUTATIONS:
        path = locate(mutation.old, texts)
        assert (REPO / path).read_text().count(mutation.old) == 1, mutation.name
        assert mutation.old != mutation.new and mutation.kill, mutation.name
        for node in mutation.kill:
            path, function = node.split("[")[0].split("::")
            tree = ast.parse((REPO / path).read_text())
            assert function in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}, node


def test_a_text_is_found_in_whichever_file_holds_it_and_must_be_unique():
    texts = {"util/a.py": "x = 1\ny = 2\n", "model/b.py": "z = 3\n", "README.md": "y = 2 in prose\n"}
    assert locate("z = 3", texts) == "model/b.py"
    assert locate("x = 1\ny", texts) == "util/a.py"  # across lines
    moved = {"util/c.py": texts["util/a.py"], "model/b.py": texts["model/b.py"]}
    assert locate("x = 1", moved) == "util/c.py"  # the file it moved to
    with pytest.raises(StaleMutation, match=r"util/a\.py \(1\), README\.md \(1\)"):
        locate("y = 2", texts)
    with pytest.raises(StaleMutation, match="no file"):
        locate("w = 4", texts)
    with pytest.raises(StaleMutation, match=r"model/b\.py \(2\)"):
        locate("3", {"model/b.py": "3 + 3"})


def test_the_table_itself_and_binary_files_are_not_searched():
    files = tracked_files(REPO)
    texts = tracked_texts(REPO, files)
    assert TABLE == "tests/mutation_check.py" and TABLE in files and TABLE not in texts
    assert "embeddings/pascal_glove50.npy" in files and "embeddings/pascal_glove50.npy" not in texts
    assert "util/engine/loop.py" in texts


@pytest.mark.slow
def test_every_mutant_is_killed():
    done = subprocess.run([sys.executable, "-m", "tests.mutation_check"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{len(MUTATIONS)} of {len(MUTATIONS)} killed" in done.stdout
