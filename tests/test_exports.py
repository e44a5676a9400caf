"""Every name README.md shows is importable from where it says, and every package export resolves.

What counts as "shown" (anywhere in README.md: prose, inline code, code blocks, tables):

- ``from costream.x import A, B as C`` (also parenthesised over several lines);
- a dotted ``costream.x.Name`` (``costream.x`` a package; two-part names that are not modules,
  such as the ``costream.stage`` header or the ``costream.decode`` metric namespace, are not);
- in a table with an "import as" column, each backticked ``CapitalisedName`` in a row is
  importable from that row's module (``| `transforms/` | `costream.transforms` | ...
  `ContinualInference` ... |``).
"""

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PACKAGES = ("costream.models", "costream.connectors", "costream.transforms", "costream.pipelines")

FROM_IMPORT = re.compile(r"\bfrom\s+(costream(?:\.\w+)+)\s+import\s+(\([^)]*\)|[^\n#`]+)")
DOTTED = re.compile(r"(?<![\w./])costream(?:\.\w+)+")
BACKTICKED = re.compile(r"`([^`]+)`")


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def imported_names(clause):
    names = []
    for part in clause.strip().strip("()").split(","):
        name = part.split(" as ")[0].strip()
        if re.fullmatch(r"[A-Za-z_]\w*", name):
            names.append(name)
    return names


def table_mentions(text):
    """(line, module, name) for the tables that have an "import as" column."""
    out = []
    lines = text.splitlines()
    column = None
    for n, line in enumerate(lines, 1):
        if not line.lstrip().startswith("|"):
            column = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if column is None:
            heads = [c.lower() for c in cells]
            column = heads.index("import as") if "import as" in heads else -1
            continue
        if column < 0 or set(line.replace("|", "").strip()) <= set("-: "):
            continue  # another kind of table, or the separator row
        modules = BACKTICKED.findall(cells[column])
        assert len(modules) == 1, f"README.md:{n}: one `module` in the 'import as' column"
        for i, cell in enumerate(cells):
            if i != column:
                for token in BACKTICKED.findall(cell):
                    if re.fullmatch(r"[A-Z]\w*", token):
                        out.append((n, modules[0], token))
    return out


def readme_mentions():
    """(line, module, name or None) for every costream name README.md shows."""
    text = README.read_text()
    out = []
    for m in FROM_IMPORT.finditer(text):
        n = line_of(text, m.start())
        out += [(n, m.group(1), name) for name in imported_names(m.group(2))]
    for m in DOTTED.finditer(text):
        parts = m.group(0).split(".")
        n = line_of(text, m.start())
        if len(parts) == 2:
            if importlib.util.find_spec(m.group(0)) is not None:
                out.append((n, m.group(0), None))  # a package: import it
            continue  # a header or metric namespace (costream.stage, costream.decode)
        out.append((n, ".".join(parts[:2]), ".".join(parts[2:])))
    out += table_mentions(text)
    return sorted(set(out), key=lambda t: (t[0], t[1], t[2] or ""))


MENTIONS = readme_mentions()


def resolve(module, name):
    """``module.name`` where ``name`` may be ``sub.Name``: import the longest module prefix."""
    parts = name.split(".") if name else []
    for i in range(len(parts), -1, -1):
        try:
            obj = importlib.import_module(".".join([module, *parts[:i]]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(module)


def test_the_readme_shows_names_of_every_package():
    modules = {m.split(".")[1] for _, m, _ in MENTIONS}
    assert {"models", "transforms"} <= modules, MENTIONS  # the parser found the README's names


@pytest.mark.parametrize(
    ("module", "name"),
    [(m, name) for _, m, name in MENTIONS],
    ids=[f"README.md:{n}:{m}{'.' + name if name else ''}" for n, m, name in MENTIONS],
)
def test_readme_name_is_importable(module, name):
    if name is None or "." in name:
        assert resolve(module, name) is not None
    else:  # the README's own words: "from module import name"
        namespace = {}
        exec(f"from {module} import {name}", namespace)
        assert namespace[name] is not None


@pytest.mark.parametrize("package", PACKAGES)
def test_every_export_of_a_package_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        obj = getattr(module, name)
        # a re-export is the defining module's object, under the same name
        where = getattr(obj, "__module__", None)
        if where and where.startswith(package + ".") and hasattr(obj, "__name__"):
            assert getattr(importlib.import_module(where), name) is obj, (package, name)


@pytest.mark.parametrize("package", ["costream.connectors", "costream.transforms"])
def test_unknown_names_fail_with_the_package_name(package):
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'Nope'"):
        _ = importlib.import_module(package).Nope
