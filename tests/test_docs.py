"""Documentation a user can open: the configuration reference is current, and no citation points outside."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_generated_from_the_current_config():
    spec = importlib.util.spec_from_file_location("make_config_docs", ROOT / "scripts" / "make_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "config.md").read_text() == module.render(), \
        "docs/config.md is stale: run python scripts/make_config_docs.py"


def test_no_citation_points_to_a_document_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "rlft", "scripts", "tests", "configs", "docs", "README.md"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    cited = [f"{f}:{n}" for f in files if f.endswith((".py", ".md", ".yaml")) and f != "tests/test_docs.py"
             for n, line in enumerate((ROOT / f).read_text().splitlines(), 1) if re.search(r"\bDESIGN\b", line)]
    assert cited == [], f"cite docs/methods.md instead of DESIGN: {cited}"


def test_every_docs_link_in_the_code_names_a_file_and_section_that_exist():
    files = subprocess.run(["git", "ls-files", "rlft", "scripts", "tests", "README.md", "docs"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    methods = (ROOT / "docs" / "methods.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", methods, flags=re.M)}
    missing = []
    for f in files:
        if not f.endswith((".py", ".md")):
            continue
        for ref in re.findall(r"docs/methods\.md#([a-z0-9-]+)", (ROOT / f).read_text()):
            if ref not in anchors:
                missing.append(f"{f}: #{ref}")
    assert missing == [], missing


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")
