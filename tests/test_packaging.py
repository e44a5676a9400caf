"""pyproject.toml's extras follow the package layering, and the setup scripts install them all."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

# tomllib is in the standard library from Python 3.11 (costream supports 3.10)
tomllib = pytest.importorskip("tomllib", reason="needs Python 3.11+ (tomllib)")
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
MODELS_ONLY = {"torch", "numpy", "safetensors"}
# extras for working on costream, not layers of it: `all` need not include them
TOOLING = {"dev"}


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot read a distribution name in {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _self_extras(requirement: str) -> list[str]:
    """``costream[a,b]`` -> ``["a", "b"]``; any other requirement -> ``[]``."""
    match = re.fullmatch(r"\s*costream\s*\[([^\]]*)\]\s*", requirement)
    return [e.strip() for e in match.group(1).split(",")] if match else []


def _names(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names an extra installs, with ``costream[...]`` self-references expanded."""
    assert extra in EXTRAS, f"costream[{extra}] is referenced but not defined"
    assert extra not in seen, f"the extras reference each other in a cycle through {extra!r}"
    names: set[str] = set()
    for requirement in EXTRAS[extra]:
        inner = _self_extras(requirement)
        if inner:
            for name in inner:
                names |= _names(name, seen | {extra})
        else:
            names.add(_name(requirement))
    return names | {_name(r) for r in PROJECT["dependencies"]}


def test_models_extra_is_torch_numpy_safetensors_only():
    assert _names("models") <= MODELS_ONLY, _names("models") - MODELS_ONLY
    assert {"torch", "numpy", "safetensors"} <= _names("models")


def test_base_dependencies_are_a_subset_of_models():
    base = {_name(r) for r in PROJECT["dependencies"]}
    assert base <= MODELS_ONLY, base - MODELS_ONLY


def test_all_covers_every_extra():
    covered = _names("all")
    for extra in EXTRAS:
        if extra in TOOLING | {"all"}:
            continue
        missing = _names(extra) - covered
        assert not missing, f"costream[all] lacks {sorted(missing)} from costream[{extra}]"


@pytest.mark.parametrize(
    "extra, names", [("beam", {"apache-beam"}), ("kafka", {"kafka-python"}), ("media", {"av"})]
)
def test_layer_extras_carry_their_layer(extra, names):
    assert names <= _names(extra)
    assert not names & _names("models"), f"costream[models] pulls {names & _names('models')}"


def _third_party_imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    tops: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return {t for t in tops if t not in sys.stdlib_module_names and t != "__future__"}


def test_models_imports_only_what_the_models_extra_installs():
    # module level: torch, numpy, safetensors (and costream.models itself); inside functions
    # an optional extra may appear (tqdm for costream.models.train), but never Beam or Kafka
    sources = sorted((ROOT / "models").rglob("*.py"))
    assert sources
    for path in sources:
        top = _third_party_imports(path, module_level_only=True) - {"costream"}
        assert top <= MODELS_ONLY, f"{path.relative_to(ROOT)} imports {sorted(top - MODELS_ONLY)}"
        anywhere = _third_party_imports(path, module_level_only=False)
        heavy = anywhere & {"apache_beam", "kafka", "av", "cv2", "yaml"}
        assert not heavy, f"{path.relative_to(ROOT)} imports {sorted(heavy)}"


def test_models_does_not_import_the_upper_layers():
    upper = re.compile(r"^\s*(from|import)\s+costream\.(connectors|transforms|pipelines)\b", re.M)
    for path in sorted((ROOT / "models").rglob("*.py")):
        assert not upper.search(path.read_text()), path.relative_to(ROOT)


def test_setup_and_image_install_every_extra():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r'pip install -q -e "\.\[all,dev\]"', setup), "scripts/setup.sh"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^RUN pip install "\.\[all\]"', dockerfile, re.M), "Dockerfile"
