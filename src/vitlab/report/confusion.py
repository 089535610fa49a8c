"""The confusion matrix of ``vitlab eval`` (``confusion.json`` = ``{"classes": [...], "matrix": [[...]]}``, rows
true classes, columns predicted): each row normalised to the share of that true class, counts written in the
cells when the matrix is small enough to read them."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitlab.errors import DataError
from vitlab.report.canvas import new_figure, save, style


def read_confusion(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Classes and the count matrix of a ``confusion.json``; a malformed file is named."""
    try:
        data: Any = json.loads(Path(path).read_text())
        classes = [str(c) for c in data["classes"]]
        matrix = np.asarray(data["matrix"], dtype=float)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a confusion matrix file ({error})") from None
    if matrix.shape != (len(classes), len(classes)):
        raise DataError(f"{path}: matrix of shape {matrix.shape} for {len(classes)} classes")
    return classes, matrix


def confusion_figure(classes: Sequence[str], matrix: np.ndarray, out_stem: str | os.PathLike,
                     title: str | None = None) -> Path:
    matrix = np.asarray(matrix, dtype=float)
    count = len(classes)
    if matrix.shape != (count, count):
        raise DataError(f"confusion matrix of shape {matrix.shape} for {count} classes")
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(9.0, 2.5 + 0.45 * count)
    with style():
        figure = new_figure(side + 1.2, side)
        axis = figure.add_subplot()
        axis.grid(False)
        shown = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        labels = [c if len(c) <= 14 else c[:13] + "…" for c in classes]
        every = max(1, -(-count // 30))
        axis.set_xticks(range(0, count, every), labels[::every], rotation=60, ha="right", rotation_mode="anchor")
        axis.set_yticks(range(0, count, every), labels[::every])
        if count <= 20:
            for i in range(count):
                for j in range(count):
                    if matrix[i, j]:
                        axis.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                                  color="white" if shares[i, j] > 0.5 else "black")
        axis.set_xlabel("Predicted class")
        axis.set_ylabel("True class")
        total = matrix.sum()
        accuracy = np.trace(matrix) / total if total else float("nan")
        axis.set_title(title or f"Confusion matrix (top-1 accuracy {100 * accuracy:.2f}%, {int(total)} images)")
        figure.colorbar(shown, ax=axis, shrink=0.8, label="Share of the true class")
        return save(figure, out_stem)
