"""The README lists every command the CLI has and links every page of docs/ (a new user's map)."""
from __future__ import annotations

import re
from pathlib import Path

from vitlab.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in COMMANDS if f"`vitlab {name}" not in readme]
    assert not missing, f"README.md's command table lacks: {', '.join(missing)}"


def test_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\(docs/([\w.-]+\.md)", readme))
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"README.md links no: {', '.join(sorted(pages - linked))}"


def test_docs_show_how_to_train_the_scratch_baseline() -> None:
    training = (ROOT / "docs" / "training.md").read_text()
    assert "### The from-scratch baseline" in training and "model.init_from=null" in training
