"""Study figures in the layout of the paper's Figures 3-5: a log x axis (pre-training images, or compute) with
labelled ticks, one line per model with a legend, error bars over seeds where there are several.

``plot_study(points, x_label, y_label, out_stem)`` takes plain rows ``{"model", "x", "mean", "std"}`` (``std``
optional, in the same unit as ``mean``), so every study (and the demo's few-shot curve) draws through it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from matplotlib.ticker import FuncFormatter, NullFormatter

from vitlab.errors import DataError
from vitlab.report.canvas import new_figure, save, style

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def human_number(value: float, _position: Any = None) -> str:
    """Tick labels as the paper writes them: 300M, 30M, 1.3k, 10."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def group_points(points: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, float, float]]]:
    """model -> [(x, mean, std)] sorted by x; a point without ``model``, ``x`` or ``mean`` is named."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for index, point in enumerate(points):
        missing = [key for key in ("model", "x", "mean") if point.get(key) is None]
        if missing:
            raise DataError(f"study point {index} has no {', '.join(missing)}: {dict(point)}")
        std = point.get("std")
        series.setdefault(str(point["model"]), []).append(
            (float(point["x"]), float(point["mean"]), 0.0 if std is None else float(std)))
    return {model: sorted(values) for model, values in series.items()}


def plot_study(points: Iterable[Mapping[str, Any]], x_label: str, y_label: str, out_stem: str | os.PathLike,
               log_x: bool = True, title: str | None = None) -> Path:
    """One line per model (legend), error bars where ``std`` > 0, log x with a labelled tick at every measured x
    when there are few of them (else matplotlib's decade ticks). Returns the PNG path (an SVG lies beside it)."""
    series = group_points(points)
    if not series:
        raise DataError(f"no study points to plot for {out_stem}")
    if log_x and any(x <= 0 for values in series.values() for x, _, _ in values):
        raise DataError(f"{out_stem}: a log x axis needs positive x values ({x_label})")
    with style():
        figure = new_figure(5.2, 3.6)
        axes = figure.add_subplot()
        for index, (model, values) in enumerate(series.items()):
            xs, means, stds = zip(*values)
            axes.errorbar(xs, means, yerr=stds if any(stds) else None, marker=MARKERS[index % len(MARKERS)],
                          ms=5, capsize=3, lw=1.6, label=model)
        xs = sorted({x for values in series.values() for x, _, _ in values})
        if log_x:
            axes.set_xscale("log")
            if len(xs) <= 10:
                axes.set_xticks(xs)
                axes.xaxis.set_major_formatter(FuncFormatter(human_number))
                axes.xaxis.set_minor_formatter(NullFormatter())
            if len(xs) == 1:
                axes.set_xlim(xs[0] / 2, xs[0] * 2)
        means = [m for values in series.values() for _, m, _ in values]
        if max(means) - min(means) < 1e-9:  # a flat line still gets two y ticks
            centre = means[0]
            axes.set_ylim(centre - max(abs(centre) * 0.05, 1.0), centre + max(abs(centre) * 0.05, 1.0))
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.legend(title="Model" if len(series) > 1 else None, loc="best")
        if title:
            axes.set_title(title)
        return save(figure, out_stem)

