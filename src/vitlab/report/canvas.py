"""How every vitlab figure is made and written: a bare matplotlib ``Figure`` (no pyplot, no display, no global
backend switch), saved as PNG and as SVG side by side, each written atomically.

Figures are drawn on ``matplotlib.figure.Figure`` objects rather than through ``pyplot`` so that drawing in a
training process never opens a window, never touches the user's backend choice, and never leaks figures kept
alive by pyplot's registry. PNGs carry matplotlib's ``Software`` text chunk, which tests use to tell them from
hand-drawn images.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure

# One look for every figure: readable at the size of a docs page, light grid, no top/right spines.
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",  # SVG text stays text: searchable, selectable, smaller
    "svg.hashsalt": "vitlab",  # stable element ids: the same data gives the same SVG
}
FORMATS: tuple[str, ...] = ("png", "svg")
DPI = 110


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches laid out by matplotlib's constrained layout; create it and its axes
    inside :func:`style` so that they take the vitlab look."""
    return Figure(figsize=(width, height), layout="constrained")


def style():
    """Context manager applying :data:`STYLE` while axes are created and drawn."""
    return matplotlib.rc_context(STYLE)


def save(figure: Figure, out_stem: str | os.PathLike, formats: Sequence[str] = FORMATS) -> Path:
    """Write ``out_stem.png`` and ``out_stem.svg`` (atomically) and return the PNG's path."""
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with style():
        for fmt in formats:
            target = stem.with_name(f"{stem.name}.{fmt}")
            tmp = target.with_name(f".{target.name}.tmp")
            figure.savefig(tmp, format=fmt, dpi=DPI, metadata={"Title": stem.name.replace("_", " ")})
            os.replace(tmp, target)
            written.append(target)
    return written[0]
