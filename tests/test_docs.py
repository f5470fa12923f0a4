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
    missing = []
    for f in files:
        if not f.endswith((".py", ".md")):
            continue
        text = (ROOT / f).read_text()
        links = re.findall(r"(docs/[\w/-]+\.md)#([a-z0-9-]+)", text)
        if f == "README.md":  # its links within itself: (#section)
            links += [("README.md", ref) for ref in re.findall(r"\]\(#([a-z0-9-]+)\)", text)]
        for doc, ref in links:
            target = ROOT / doc
            if not target.exists() or ref not in _anchors(target):
                missing.append(f"{f}: {doc}#{ref}")
    assert missing == [], missing


def _anchors(path: Path) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")
