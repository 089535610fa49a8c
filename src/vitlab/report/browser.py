"""Open a ``report.html`` in headless Chromium and say what a reader would see: console errors, images that did
not load, requests that left the machine, and the headline table's numbers.

Playwright's Python package drives the system's Chromium (Debian's ``chromium``; ``VITLAB_CHROMIUM`` names another
binary), so no browser download is needed. Both are optional: :func:`browser_unavailable` says why a check cannot
run (the tests skip with that reason).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str | None:
    """The Chromium binary to drive: ``$VITLAB_CHROMIUM``, else Debian's ``/usr/bin/chromium``, else on PATH."""
    for candidate in (os.environ.get("VITLAB_CHROMIUM"), DEFAULT_CHROMIUM, shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_unavailable() -> str | None:
    """None when a page can be checked; otherwise the reason (what to install)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install 'vitlab[report]')"
    if chromium_path() is None:
        return "no Chromium binary (apt-get install chromium, or set VITLAB_CHROMIUM)"
    return None


@dataclass
class PageCheck:
    """What the browser saw on one page."""

    title: str
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)  # alt text of <img> with naturalWidth == 0
    images: int = 0
    external_requests: list[str] = field(default_factory=list)  # anything not file: or data:
    headline: dict[str, float] = field(default_factory=dict)  # data-key -> data-value of #headline cells
    tables: dict[str, dict[str, float]] = field(default_factory=dict)  # table id -> {data-key: value}
    links: list[str] = field(default_factory=list)


def check_page(html: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1200,
               full_page: bool = True) -> PageCheck:
    """Load ``html`` from disk, wait for every image, collect :class:`PageCheck`; save a screenshot (the whole
    page, or the first screen when not ``full_page``)."""
    from playwright.sync_api import sync_playwright

    path = Path(html).resolve()
    errors: list[str] = []
    external: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: external.append(request.url)
                    if not request.url.startswith(("file:", "data:")) else None)
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.naturalWidth])")
            tables = json.loads(page.evaluate("""() => JSON.stringify(Object.fromEntries(
                Array.from(document.querySelectorAll('table[id]')).map(t => [t.id, Object.fromEntries(
                    Array.from(t.querySelectorAll('[data-key]')).map(c => [c.dataset.key, JSON.parse(c.dataset.value)])
                )])))"""))
            links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=full_page)
            title = page.title()
        finally:
            browser.close()
    return PageCheck(title=title, console_errors=errors, broken_images=[alt for alt, w in images if not w],
                     images=len(images), external_requests=external, headline=tables.get("headline", {}),
                     tables=tables, links=links)
