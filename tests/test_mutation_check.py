"""The mutation check (``tests/mutation_check.py``): its table is current, and every mutant is killed."""
import ast
import subprocess
import sys

import pytest

from tests.mutation_check import MUTATIONS, REPO


def test_every_mutation_matches_once_and_names_existing_tests():
    """A fast guard in the ordinary suite: a mutation whose text moved or a kill test that was renamed shows up
    here, not only when the slow check runs."""
    assert len(MUTATIONS) >= 16 and len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    for mutation in MUTATIONS:
        assert (REPO / mutation.path).read_text().count(mutation.old) == 1, mutation.name
        assert mutation.old != mutation.new and mutation.kill, mutation.name
        for node in mutation.kill:
            path, function = node.split("[")[0].split("::")
            tree = ast.parse((REPO / path).read_text())
            assert function in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}, node


@pytest.mark.slow
def test_every_mutant_is_killed():
    done = subprocess.run([sys.executable, "-m", "tests.mutation_check"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{len(MUTATIONS)} of {len(MUTATIONS)} killed" in done.stdout
