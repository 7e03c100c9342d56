"""The tree's dependency rules, read from the source (ast): no import cycle among the project's modules, the layers
of util/ (model/ imports no util; shared helpers import only shared helpers; reading data imports no training,
evaluation or run code; util/ imports no command-line tool or entry point), model/ computes without reading files,
and no module outside a benchmark's own module branches on a dataset's name."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "util", "tools")
ENTRY_POINTS = ("train.py", "train_base.py", "test.py", "predict.py")

# calls that read a file: builtins and functions by name, methods by attribute name
READING_NAMES = {"open"}
READING_ATTRIBUTES = {"load", "loads", "open", "read_text", "read_bytes", "fromfile", "loadtxt", "genfromtxt", "imread",
                      "safe_load", "read_csv", "memmap"}


def project_modules(repo: Path = REPO) -> dict[str, Path]:
    """Module name -> file of every module of the project's packages and entry points."""
    modules = {name.removesuffix(".py"): repo / name for name in ENTRY_POINTS if (repo / name).is_file()}
    for package in PACKAGES:
        for path in sorted((repo / package).rglob("*.py")):
            parts = path.relative_to(repo).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports anywhere (top level, inside functions, under TYPE_CHECKING), with the
    ``X.Y`` candidates of ``from X import Y``."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a submodule's import also imports its packages)."""
    modules = project_modules(repo)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imported_names(path, module):
            parts = name.split(".")
            targets.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules)
        graph[module] = targets - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def file_reading_calls(path: Path, root: Path = REPO) -> list[str]:
    """``file:line call`` (``file`` relative to ``root``) for every call in ``path`` that reads a file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if (isinstance(func, ast.Name) and name in READING_NAMES) or \
                (isinstance(func, ast.Attribute) and name in READING_ATTRIBUTES):
            calls.append(f"{path.relative_to(root)}:{node.lineno} {ast.unparse(func)}")
    return calls


def test_the_walk_sees_every_package_and_the_imports_inside_functions():
    graph = import_graph()
    assert {"model.mianet", "util.engine.loop", "tools", "train", "test", "predict"} <= graph.keys()
    assert "util.data.transform" in graph["util.data.image_io"]  # imported inside a function
    assert "util.runs.weights" in graph["train"]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycles_finds_a_loop_through_a_function_level_import(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "model" / "net.py").write_text("def load():\n    from util.files import read\n    return read()\n")
    (tmp_path / "util" / "files.py").write_text("from model import net\n\ndef read():\n    return net\n")
    assert cycles(import_graph(tmp_path)) == [["model.net", "util.files"]]


def test_no_test_imports_a_benchmark():
    """Benchmarks print figures and may change freely; what a test needs lives in the library or in tests/."""
    importers = [str(path.relative_to(REPO)) for path in sorted((REPO / "tests").rglob("*.py"))
                 if any(name == "bench" or name.startswith("bench.") for name in _imported_names(path, "tests"))]
    assert importers == []


def test_model_reads_no_files():
    calls = [call for path in sorted((REPO / "model").rglob("*.py")) for call in file_reading_calls(path)]
    assert calls == []


def test_file_reading_calls_are_recognised(tmp_path):
    source = tmp_path / "reader.py"
    source.write_text("import torch\nfrom pathlib import Path\n\ndef f(p):\n    a = open(p)\n    b = torch.load(p)\n"
                      "    c = Path(p).read_text()\n    return torch.cat([a, b, c])\n")
    assert file_reading_calls(source, tmp_path) == ["reader.py:5 open", "reader.py:6 torch.load",
                                                     "reader.py:7 Path(p).read_text"]
