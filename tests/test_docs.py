"""README.md and docs/*.md render on GitHub as written and point at what exists.

Each page is parsed with markdown-it-py (CommonMark plus tables, as GitHub renders them). A page fails on: a code
fence that is not closed where it was meant to be, a line starting with ``#`` that does not render as a heading,
a line starting like a numbered item that is not one, a numbered list whose items are not 1, 2, 3, ..., a relative
link or image whose file does not exist, an anchor (``page.md#section``, ``#section``) that matches no heading of
its page (GitHub's slugs), and a command in code (``python -m X``, ``python X.py``, ``bash X.sh``) whose module or
file the repository does not have. The checks are functions run on the real pages and on small broken pages.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

REPO = Path(__file__).resolve().parents[1]
DOCS = ("data", "model", "training", "performance", "reproducibility", "differences", "results")

FENCE_LINE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
HASH_LINE = re.compile(r"^\s{0,3}#")
NUMBERED_LINE = re.compile(r"^\s*\d{1,9}[.)](\s|$)")
PYTHON_MODULE = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)")
RUNNERS = {"bash", "sh", "source", "python", "python3", "torchrun"}
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages(repo: Path = REPO) -> list[Path]:
    """The pages a reader opens: README.md and every docs/*.md."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def parse(text: str) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").parse(text)


def walk(tokens: list[Token]):
    """Every token, inline children included."""
    for token in tokens:
        yield token
        yield from token.children or ()


def code_lines(tokens: list[Token]) -> set[int]:
    """Source lines (0-based) inside code blocks and HTML blocks."""
    return {line for t in tokens if t.type in ("fence", "code_block", "html_block") and t.map
            for line in range(*t.map)}


def fence_problems(lines: list[str], tokens: list[Token]) -> list[str]:
    """A fence must end at its own closing line (an unclosed one runs to the end of its container), and no line
    inside a fence may look like a fence with text after it (a closing fence takes no text: such a line leaves
    the block open and shifts every later fence)."""
    found = []
    for token in tokens:
        if token.type != "fence":
            continue
        start, end = token.map
        opener = token.markup
        closing = lines[end - 1].strip() if end - 1 > start else ""
        if not (closing.startswith(opener[0] * len(opener)) and set(closing) == {opener[0]}):
            found.append(f"line {start + 1}: the code fence {opener!r} is never closed (it runs to line {end})")
        for number in range(start + 1, end - 1):
            match = FENCE_LINE.match(lines[number])
            fence_like = match and match.group(1)[0] == opener[0] and len(match.group(1)) >= len(opener)
            if fence_like and match.group(2).strip():
                found.append(f"line {number + 1}: a fence line with text after it inside the code block opened on "
                             f"line {start + 1}; a closing fence takes no text, so the block does not end there")
    return found


def heading_problems(lines: list[str], tokens: list[Token]) -> list[str]:
    """Every line starting with ``#`` outside code is a heading."""
    headings = {t.map[0] for t in tokens if t.type == "heading_open"}
    skip = code_lines(tokens)
    return [f"line {n + 1}: {line.strip()!r} starts with '#' but does not render as a heading"
            for n, line in enumerate(lines) if n not in skip and HASH_LINE.match(line) and n not in headings]


def list_problems(lines: list[str], tokens: list[Token]) -> list[str]:
    """Numbered lists count 1, 2, 3, ...; a line that starts like a numbered item outside code is one."""
    found = []
    items = {t.map[0] for t in tokens if t.type == "list_item_open"}
    skip = code_lines(tokens)
    for n, line in enumerate(lines):
        if n not in skip and NUMBERED_LINE.match(line) and n not in items:
            found.append(f"line {n + 1}: {line.strip()[:40]!r} looks like a numbered item but is not one (a list "
                         "that does not start at 1 cannot interrupt a paragraph)")
    for index, token in enumerate(tokens):
        if token.type != "ordered_list_open":
            continue
        numbers = []
        for inner in tokens[index + 1:]:
            if inner.type == "ordered_list_close" and inner.level == token.level:
                break
            if inner.type == "list_item_open" and inner.level == token.level + 1:
                numbers.append(int(inner.info))
        expected = list(range(1, len(numbers) + 1))
        if numbers != expected:
            found.append(f"line {token.map[0] + 1}: numbered list {numbers} is not {expected} (an item's content "
                         "that is not indented under it ends the list)")
    return found


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation removed, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def heading_slugs(tokens: list[Token]) -> set[str]:
    """The anchors of a page's headings (a repeated one gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    slugs = set()
    for token, inline in zip(tokens, tokens[1:]):
        if token.type == "heading_open":
            text = "".join(c.content for c in inline.children or () if c.type in ("text", "code_inline"))
            base = slug(text)
            count = seen.get(base, 0)
            seen[base] = count + 1
            slugs.add(base if count == 0 else f"{base}-{count}")
    return slugs


def link_problems(page: Path, tokens: list[Token]) -> list[str]:
    """Relative links and images name a file that exists, and an anchor names a heading of its page."""
    found = []
    for token in walk(tokens):
        target = token.attrs.get("href") if token.type == "link_open" else \
            token.attrs.get("src") if token.type == "image" else None
        if not isinstance(target, str) or EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if not file.exists():
            found.append(f"link {target!r}: {path_part} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in heading_slugs(parse(file.read_text())):
            found.append(f"link {target!r}: {file.name} has no heading with the anchor #{anchor}")
    return found


def module_exists(name: str, repo: Path) -> bool:
    """``python -m name`` finds a module: one of the repository's, or an installed top-level one (pip, pytest)."""
    top = name.split(".")[0]
    if (repo / top).is_dir() or (repo / f"{top}.py").is_file():
        path = repo / name.replace(".", "/")
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    return importlib.util.find_spec(top) is not None


def command_problems(tokens: list[Token], repo: Path) -> list[str]:
    """Commands in code blocks and code spans name modules and scripts that exist (run from the repo root)."""
    found = []
    for token in walk(tokens):
        if token.type not in ("fence", "code_block", "code_inline"):
            continue
        for line in token.content.replace("\\\n", " ").splitlines():
            for module in PYTHON_MODULE.findall(line):
                if not module_exists(module, repo):
                    found.append(f"`python -m {module}`: no such module")
            words = [word.strip("'\"") for word in line.split("#")[0].split()]
            for index, word in enumerate(words):
                if word.endswith((".sh", ".py")) and RUNNERS & set(words[:index]) and not (repo / word).is_file():
                    found.append(f"{word!r} in a command: no such file")
    return found


def page_problems(page: Path, repo: Path = REPO) -> list[str]:
    """Everything wrong with one page, one line each."""
    text = page.read_text()
    lines, tokens = text.splitlines(), parse(text)
    return (fence_problems(lines, tokens) + heading_problems(lines, tokens) + list_problems(lines, tokens)
            + link_problems(page, tokens) + command_problems(tokens, repo))


# ---------------------------------------------------------------- the real pages


def test_every_docs_page_exists_and_the_readme_links_it():
    found = pages()
    assert [p.stem for p in found[1:]] == sorted(DOCS)
    targets = {t.attrs["href"].partition("#")[0] for t in walk(parse(found[0].read_text())) if t.type == "link_open"}
    assert {f"docs/{name}.md" for name in DOCS} <= targets


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_page_renders_as_written_and_points_at_what_exists(page):
    assert page_problems(page) == []


def test_the_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 260


# ---------------------------------------------------------------- each rule, broken on purpose


def problems_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Its section: the `key` (details)\n")
    (tmp_path / "tools").mkdir(exist_ok=True)
    (tmp_path / "tools" / "__init__.py").write_text("")
    (tmp_path / "tools" / "real.py").write_text("")
    (tmp_path / "run.sh").write_text("")
    page = tmp_path / "README.md"
    page.write_text(text)
    return page_problems(page, tmp_path)


GOOD = """# Title

## Set-up

1. First.

   ```bash
   bash run.sh
   python -m tools.real --help
   python -m pytest -q
   ```
2. Second, see [the section](docs/other.md#its-section-the-key-details) and [above](#set-up).
3. Third.

| a | b |
|---|---|
| [x](docs/other.md) | `python -m tools.real` |
"""


def test_a_good_page_has_no_problems(tmp_path):
    assert problems_of(tmp_path, GOOD) == []


def test_an_unclosed_fence_is_found(tmp_path):
    found = problems_of(tmp_path, "# T\n\n```bash\nbash run.sh\n\ntext\n")
    assert found == ["line 3: the code fence '```' is never closed (it runs to line 6)"]


def test_a_fence_closed_with_text_after_it_is_found(tmp_path):
    text = "# T\n\n```bash\nbash run.sh\n``` and then prose\n\n## Next\n\n```bash\nbash run.sh\n```\n"
    found = problems_of(tmp_path, text)
    assert any(p.startswith("line 5: a fence line with text after it") for p in found), found


def test_a_hash_line_that_is_no_heading_is_found(tmp_path):
    assert problems_of(tmp_path, "# T\n\n#Heading without a space\n") == [
        "line 3: '#Heading without a space' starts with '#' but does not render as a heading"]
    assert problems_of(tmp_path, "# T\n\n```bash\n# a comment in code\n```\n") == []


def test_a_numbered_list_that_skips_or_restarts_is_found(tmp_path):
    found = problems_of(tmp_path, "# T\n\n1. a\n2. b\n4. c\n")
    assert found == ["line 3: numbered list [1, 2, 4] is not [1, 2, 3] (an item's content that is not indented "
                     "under it ends the list)"]
    broken = "# T\n\n1. a\n\n```bash\nbash run.sh\n```\n\n2. b\n3. c\n"  # the fence is not indented under item 1
    found = problems_of(tmp_path, broken)
    assert found == ["line 9: numbered list [2, 3] is not [1, 2] (an item's content that is not indented under it "
                     "ends the list)"]
    found = problems_of(tmp_path, "# T\n\nSome text\n2. not an item\n")
    assert found and found[0].startswith("line 4: '2. not an item' looks like a numbered item but is not one")


def test_a_link_to_a_missing_file_or_anchor_is_found(tmp_path):
    assert problems_of(tmp_path, "# T\n\nSee [it](docs/missing.md).\n") == [
        "link 'docs/missing.md': docs/missing.md does not exist"]
    assert problems_of(tmp_path, "# T\n\nSee [it](docs/other.md#no-such-section).\n") == [
        "link 'docs/other.md#no-such-section': other.md has no heading with the anchor #no-such-section"]
    assert problems_of(tmp_path, "# T\n\nSee [it](#t) and [that](#u).\n") == [
        "link '#u': README.md has no heading with the anchor #u"]
    assert problems_of(tmp_path, "# T\n\n![a picture](figure/none.png)\n") == [
        "link 'figure/none.png': figure/none.png does not exist"]


def test_a_command_naming_a_missing_module_or_script_is_found(tmp_path):
    text = ("# T\n\n```bash\npython -m tools.missing --x\npython -m tools.real\nbash missing.sh pascal\n"
            "python nowhere.py --config c\nNPROC=2 bash run.sh\npython -m notapackageanywhere\n```\n\n"
            "Or `python -m tools.gone`.\n")
    assert problems_of(tmp_path, text) == [
        "`python -m tools.missing`: no such module", "'missing.sh' in a command: no such file",
        "'nowhere.py' in a command: no such file", "`python -m notapackageanywhere`: no such module",
        "`python -m tools.gone`: no such module"]


def test_github_slugs():
    assert slug("PASCAL-5i and COCO-20i runs: steps, time, disk") == "pascal-5i-and-coco-20i-runs-steps-time-disk"
    assert slug("Evaluation with feature reuse (`feature_reuse: true`)") == \
        "evaluation-with-feature-reuse-feature_reuse-true"
    assert heading_slugs(parse("# A\n\n## A\n\n### A\n")) == {"a", "a-1", "a-2"}
