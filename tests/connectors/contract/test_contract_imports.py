"""The stream contract imports neither Beam nor torch: producers and tools can use it alone."""

import subprocess
import sys


def test_contract_imports_neither_beam_nor_torch():
    code = (
        "import sys\n"
        "import costream.connectors.contract as c\n"
        "assert c.decode_frame and c.fit_dead_letter\n"
        "print(sorted(m for m in ('apache_beam', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
