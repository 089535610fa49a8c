"""The HTML side of a report: plain page data (:class:`Page`) rendered by the Jinja2 template ``report.html.j2``
into one self-contained ``report.html`` (figures embedded as data URIs, CSS inline, no scripts, no network).
"""
from __future__ import annotations

import base64
import functools
import json
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Mapping

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from PIL import Image


@dataclass
class Cell:
    """One table cell; numeric cells keep their exact value (``data-value``) beside the formatted text."""

    text: str
    value: str | None = None  # JSON of the exact number, for readers and tests
    key: str = ""
    href: str | None = None


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    id: str | None = None
    row_headers: bool = True


@dataclass
class FigureRef:
    name: str
    title: str
    caption: str
    src: str  # data URI
    width: int
    height: int
    links: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Page:
    kind: str  # run | study | inspection | demo
    title: str
    question: str
    directory: str
    headline: Table | None = None
    missing_headline: str = ""
    tables: list[Table] = field(default_factory=list)
    lead_tables: list[Table] = field(default_factory=list)  # shown above the headline (the demo's Table 2)
    figures: list[FigureRef] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    configs: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdict_first: bool = False


def format_number(value: float | int) -> str:
    """A compact rendering for a table cell (the exact value stays in the cell's ``data-value``)."""
    if isinstance(value, bool) or isinstance(value, int):
        return f"{value:,}"
    if value != value:  # NaN
        return "nan"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"


def number_cell(value: Any, key: str = "", text: str | None = None) -> Cell:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Cell(text if text is not None else format_number(value), json.dumps(value), key)
    return Cell("-" if value is None else str(value), None, key)


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> ``[("metrics.test_accuracy", 0.9), ...]``; lists are skipped (tables show them)."""
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += flatten(value, name + ".")
        elif not isinstance(value, list):
            items.append((name, value))
    return items


def key_value_table(data: Mapping[str, Any], caption: str = "", skip: Iterable[str] = ()) -> Table:
    """Every scalar of ``data`` (nested keys dotted) as one row: the headline of a summary.json."""
    skipped = tuple(skip)
    rows = [[Cell(name), number_cell(value, name)] for name, value in flatten(data)
            if not any(name == s or name.startswith(s + ".") for s in skipped)]
    return Table(["quantity", "value"], rows, caption)


def embed_figure(png: str | os.PathLike, title: str, caption: str, relative_to: str | os.PathLike) -> FigureRef:
    """A PNG as a data URI, with links to the PNG and its SVG/PDF beside it (relative to the page)."""
    path = Path(png)
    with Image.open(path) as image:
        width, height = image.size
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    links = []
    for suffix in (".svg", ".pdf", ".png"):
        sibling = path.with_suffix(suffix)
        if sibling.is_file():
            links.append({"label": suffix[1:].upper(), "href": os.path.relpath(sibling, relative_to)})
    return FigureRef(path.stem, title, caption, f"data:image/png;base64,{data}", width, height, links)


@functools.cache
def _environment() -> Environment:
    """One Jinja2 environment per process: templates are compiled once, not once per page."""
    return Environment(loader=PackageLoader("vitlab.report", "templates"), autoescape=select_autoescape(["j2", "html"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _version() -> str:
    try:
        return version("vitlab")
    except PackageNotFoundError:
        return "dev"


def render(page: Page) -> str:
    return _environment().get_template("report.html.j2").render(page=page, version=_version())


def write_page(page: Page, directory: str | os.PathLike) -> Path:
    """Render ``page`` to ``directory/report.html`` atomically; returns its path."""
    target = Path(directory) / "report.html"
    tmp = target.with_name(".report.html.tmp")
    tmp.write_text(render(page), encoding="utf-8")
    os.replace(tmp, target)
    return target
