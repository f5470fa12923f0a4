"""The package's layering: no import circles, and nothing below pipeline/ imports it."""

import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "import_cycles.py"


@pytest.mark.skipif(not TOOL.exists(), reason="../shared/tools/import_cycles.py is not beside the checkout")
def test_no_import_circles_and_no_upward_imports_into_pipeline():
    out = subprocess.run([sys.executable, str(TOOL)], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
