"""mypy over the public packages, with the configuration in pyproject.toml ([tool.mypy]).

pyproject.toml maps ``costream.models`` to ``models/`` (and so on), and the editable install
reaches them through an import hook that mypy does not run. So the test builds
``build/mypy/costream/<package>`` as symlinks to the repository's folders (``mypy_path`` in the
configuration points there) and checks the packages by their import names; per-module
overrides in ``[[tool.mypy.overrides]]`` then apply by those names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# tomllib is in the standard library from Python 3.11 (costream supports 3.10)
tomllib = pytest.importorskip("tomllib", reason="needs Python 3.11+ (tomllib)")
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "connectors", "transforms", "pipelines")


def _link_sources() -> Path:
    base = ROOT / "build" / "mypy" / "costream"
    base.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link, target = base / name, ROOT / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink():
            link.unlink()
        try:
            link.symlink_to(target, target_is_directory=True)
        except FileExistsError:  # another test run made it at the same moment
            assert link.resolve() == target.resolve(), link
    return base


def test_mypy_config_checks_every_public_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["packages"] == [f"costream.{name}" for name in PACKAGES]
    assert config["mypy_path"] == "build/mypy"


@pytest.mark.slow  # seconds with a warm cache (build/mypy/.cache), about a minute without
def test_mypy_passes():
    base = _link_sources()
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    # report paths as the repository names them (models/x.py, not build/mypy/costream/models/x.py)
    output = re.sub(re.escape(f"{base.relative_to(ROOT)}{os.sep}"), "", proc.stdout + proc.stderr)
    print(output)
    assert proc.returncode == 0, f"mypy failed (exit {proc.returncode}):\n{output}"
    assert "Success: no issues found" in output, output
