"""The docs point only at what a reader can open: files in this repository and their sections.

* Every relative link and every repository path written in ``docs/*.md`` and ``README.md``
  exists; a link to a section (``file.md#anchor``) names a heading of that file.
* Every ``*.md`` named in the code's comments, docstrings and specs (``models/``,
  ``connectors/``, ``transforms/``, ``pipelines/``, ``benchmarks/``) is a file in the repository,
  and a ``docs/...md#anchor`` reference names a heading there.
* The code cites no numbered sections of documents outside the repository (``§``), no
  ``DESIGN.md`` / ``STYLE.md``, and its docstrings carry no issue numbers.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [*DOCS, ROOT / "README.md"]
PACKAGES = ("models", "connectors", "transforms", "pipelines", "benchmarks")
CODE_SUFFIXES = (".py", ".yaml", ".yml")
OWN_DOCS = ("architecture.md", "continual-attention.md", "stream-contract.md", "operations.md")

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_MD_REF = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.md)(#[\w\-\u00c0-\uffff]+)?")
_ISSUE = re.compile(r"\bissues?\s+#?\d+", re.I)


def _top_level() -> set[str]:
    """Names at the repository root that a doc's path may start with.

    Git-ignored outputs (``out/``, ``build/``) are left out: a doc may say where a command
    writes, and that folder exists only after the command ran.
    """
    ignore = ROOT / ".gitignore"
    patterns = [
        line.strip().rstrip("/")
        for line in (ignore.read_text().splitlines() if ignore.exists() else [])
        if line.strip() and not line.startswith("#")
    ]
    return {
        p.name
        for p in ROOT.iterdir()
        if not p.name.startswith(".") and not any(fnmatch.fnmatch(p.name, g) for g in patterns)
    }


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading).strip().lower()
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N"))
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    """The section anchors of a Markdown file (headings outside code fences)."""
    text = _FENCE.sub("", md.read_text(encoding="utf-8"))
    return {slug(h) for h in _HEADING.findall(text)}


def _repo_path(token: str) -> str | None:
    """The repository path a code span names, or None when it is not a path."""
    token = token.split("::", 1)[0].split("#", 1)[0].strip()
    if not token or any(c in token for c in " <>*$~{}[]()=,;|'\"") or token.startswith("."):
        return None
    first = token.split("/", 1)[0]
    if first not in _top_level():
        return None
    if "/" not in token and "." not in token:
        return None  # a bare word that happens to be a folder name (`models`): prose
    return token


def _doc_links(page: Path) -> list[tuple[str, str]]:
    """(target, how it was written) for every relative link and code-span path of a page."""
    text = page.read_text(encoding="utf-8")
    found = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # URLs and same-page anchors
        found.append((target, "link"))
    for span in _CODE_SPAN.findall(_FENCE.sub("", text)):
        path = _repo_path(span)
        if path is not None:
            found.append((path, "path"))
    return found


def test_there_are_docs_to_check():
    names = {p.name for p in DOCS}
    assert set(OWN_DOCS) <= names, sorted(names)
    assert all(_doc_links(ROOT / "docs" / name) for name in OWN_DOCS)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_paths_in_docs_exist(page):
    missing = []
    for target, how in _doc_links(page):
        path, _, anchor = target.partition("#")
        base = page.parent if how == "link" else ROOT
        resolved = (base / path).resolve() if path else page
        if not resolved.exists():
            missing.append(f"{target} ({how})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            missing.append(f"{target} (no heading with anchor #{anchor})")
    assert not missing, f"{page.relative_to(ROOT)} names what is not in the repository: {missing}"


def test_readme_lists_the_docs():
    links = {t.partition("#")[0] for t, how in _doc_links(ROOT / "README.md") if how == "link"}
    assert {f"docs/{name}" for name in OWN_DOCS} <= links, sorted(links)


def _code_files() -> list[Path]:
    files = []
    for package in PACKAGES:
        files += [p for p in sorted((ROOT / package).rglob("*")) if p.suffix in CODE_SUFFIXES]
    return files


CODE = _code_files()


def test_code_files_found():
    assert len(CODE) > 50 and any(p.name == "zoo.py" for p in CODE)


@pytest.mark.parametrize("path", CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_names_only_repo_docs(path):
    text = path.read_text(encoding="utf-8")
    bad = []
    for ref, anchor in _MD_REF.findall(text):
        candidates = [ROOT / ref] if "/" in ref else [ROOT / ref, ROOT / "docs" / ref]
        target = next((c for c in candidates if c.exists()), None)
        if target is None:
            bad.append(ref)
        elif anchor and anchor[1:] not in anchors(target):
            bad.append(f"{ref}{anchor} (no such heading)")
    for name in ("DESIGN.md", "STYLE.md"):
        if name in text:
            bad.append(f"{name} (a design note outside the repository)")
    if "§" in text:
        lines = [i for i, line in enumerate(text.splitlines(), 1) if "§" in line]
        bad.append(f"§ section numbers of a document outside the repository, lines {lines}")
    assert not bad, f"{path.relative_to(ROOT)}: {bad}"


def _docstrings(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((getattr(node, "lineno", 1), doc))
    return out


@pytest.mark.parametrize(
    "path", [p for p in CODE if p.suffix == ".py"], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_docstrings_carry_no_issue_numbers(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hits = [(line, m.group(0)) for line, doc in _docstrings(tree) for m in _ISSUE.finditer(doc)]
    assert not hits, f"{path.relative_to(ROOT)}: docstrings cite issue numbers {hits}"


def test_slugs_follow_github():
    assert slug("Single-output attention (CoSi)") == "single-output-attention-cosi"
    assert slug("What continual Nyström equals") == "what-continual-nyström-equals"
    assert slug("`costream flink up`") == "costream-flink-up"
