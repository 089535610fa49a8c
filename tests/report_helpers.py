"""Shared by the report tests: reading figures back (SVG text, PNG metadata) and the browser gate."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(path: Path, group_prefix: str = "") -> list[str]:
    """Text of every <text> inside groups whose id starts with ``group_prefix`` (e.g. ``xtick_``, ``legend_``)."""
    root = ET.parse(path).getroot()
    texts = []
    for group in root.iter(f"{SVG}g"):
        if group.get("id", "").startswith(group_prefix):
            texts += ["".join(t.itertext()).strip() for t in group.iter(f"{SVG}text")]
    return [t for t in texts if t]


def assert_matplotlib_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.info.get("Software", "").startswith("Matplotlib"), (path, image.info)
    assert path.with_suffix(".svg").is_file() or path.with_suffix(".pdf").is_file(), f"no SVG/PDF beside {path}"


def require_browser() -> None:
    """Skip with the reason when Chromium or Playwright is missing; fail instead where `make test` installed them
    (VITLAB_REQUIRE_BROWSER=1: root with apt)."""
    from vitlab.report.browser import browser_unavailable

    reason = browser_unavailable()
    if reason is None:
        return
    if os.environ.get("VITLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests must run here but cannot: {reason}")
    pytest.skip(f"report browser tests skipped: {reason}")
