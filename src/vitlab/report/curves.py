"""Training curves from a run's ``metrics.jsonl``: loss, learning rate and accuracies against optimiser steps,
with images seen on a second axis, and loss against wall time.

Input is plain data (the parsed JSON rows), so any writer of ``metrics.jsonl`` rows (``{"step", "loss", "lr",
"train_accuracy", "dev_accuracy", "test_accuracy", "wall_seconds", ...}``) gets the same figure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from vitlab.errors import DataError
from vitlab.report.canvas import new_figure, save, style

ACCURACY_KEYS = ("train_accuracy", "dev_accuracy", "test_accuracy")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a line cut short by a kill is skipped, any other bad line is an error."""
    rows = []
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                continue  # the last line of a killed run may be cut
            raise DataError(f"{path}:{number}: not a JSON object ({error.msg})") from None
    return rows


def _series(rows: Iterable[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    pairs = [(row[x], row[key]) for row in rows
             if isinstance(row.get(key), (int, float)) and isinstance(row.get(x), (int, float))]
    pairs.sort()
    return [p[0] for p in pairs], [p[1] for p in pairs]


def training_curves(rows: list[dict[str, Any]], out_stem: str | os.PathLike, batch_size: int | None = None,
                    title: str | None = None) -> Path | None:
    """Four panels: loss, learning rate, accuracies (against steps; images seen on top when ``batch_size``
    is known) and loss against wall minutes. Returns the PNG path, or None when no row carries a loss."""
    steps, loss = _series(rows, "loss")
    if not steps:
        return None
    with style():
        figure = new_figure(8.0, 5.6)
        (ax_loss, ax_lr), (ax_acc, ax_wall) = figure.subplots(2, 2)
        ax_loss.plot(steps, loss, color="C0", label="training loss")
        for key, colour in (("dev_loss", "C1"), ("test_loss", "C2")):
            xs, ys = _series(rows, key)
            if xs:
                ax_loss.plot(xs, ys, "o-" if len(xs) < 20 else "-", color=colour, ms=3, label=key.replace("_", " "))
        ax_loss.set(xlabel="Training step", ylabel="Loss", title="Loss")
        ax_loss.legend(loc="upper right")
        xs, ys = _series(rows, "lr")
        ax_lr.plot(xs, ys, color="C4")
        ax_lr.set(xlabel="Training step", ylabel="Learning rate", title="Learning-rate schedule")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        for key, colour in zip(ACCURACY_KEYS, ("C0", "C1", "C2")):
            xs, ys = _series(rows, key)
            if xs:
                ax_acc.plot(xs, [100 * y for y in ys], "o-" if len(xs) < 20 else "-", ms=3, color=colour,
                            label=key.split("_")[0])
        ax_acc.set(xlabel="Training step", ylabel="Accuracy (%)", title="Accuracy")
        if ax_acc.get_legend_handles_labels()[0]:
            ax_acc.legend(loc="lower right")
        if batch_size:
            for axis in (ax_loss, ax_acc):
                top = axis.secondary_xaxis("top", functions=(lambda s: s * batch_size, lambda n: n / batch_size))
                top.set_xlabel("Images seen")
        seconds, wall_loss = _series(rows, "loss", x="wall_seconds")
        scale, unit = (60.0, "minutes") if seconds and seconds[-1] >= 120 else (1.0, "seconds")
        ax_wall.plot([s / scale for s in seconds], wall_loss, color="C0")
        ax_wall.set(xlabel=f"Wall time ({unit})", ylabel="Loss", title="Loss against wall time")
        if title:
            figure.suptitle(title)
        return save(figure, out_stem)
