"""Inspection figures in the layout of the paper's Figures 6 and 7.

* :func:`rollout_figure` (Figure 6): each input beside itself under its attention-rollout heat map;
* :func:`filters_figure` (Figure 7 left): principal components of the patch-embedding (or root) filters;
* :func:`similarity_figure` (Figure 7 centre): one tile per patch position showing the cosine similarity of its
  position embedding with every other position's, row and column labels, one colour bar;
* :func:`distance_figure` (Figure 7 right): mean attention distance in pixels per head (one colour per head)
  against network depth.

All take numpy arrays (no torch), so the figures depend on nothing but matplotlib.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from vitlab.errors import ShapeError
from vitlab.report.canvas import new_figure, save, style


def _as_hwc(image: np.ndarray) -> np.ndarray:
    """uint8 ``[C, H, W]`` or ``[H, W, C]`` or ``[H, W]`` -> ``[H, W]`` (grey) or ``[H, W, 3]``."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ShapeError(f"expected an image [C, H, W] or [H, W, C], got shape {np.asarray(image).shape}")
    return array


def rollout_figure(images: Sequence[np.ndarray], heatmaps: Sequence[np.ndarray], out_stem: str | os.PathLike,
                   columns: int = 2, title: str | None = None) -> Path:
    """Pairs (input, input under the rollout heat map ``[gh, gw]`` in [0, 1]), ``columns`` pairs a row."""
    if len(images) != len(heatmaps) or not images:
        raise ShapeError(f"rollout_figure needs as many heat maps as images, got {len(images)} and {len(heatmaps)}")
    rows = -(-len(images) // columns)
    with style():
        figure = new_figure(1.7 * 2 * columns, 1.7 * rows + 0.4)
        grid = figure.subplots(rows, 2 * columns, squeeze=False)
        for axis in grid.flat:
            axis.set_axis_off()
        for index, (image, heat) in enumerate(zip(images, heatmaps)):
            array = _as_hwc(image)
            height, width = array.shape[:2]
            left, right = grid[index // columns, 2 * (index % columns)], grid[index // columns, 2 * (index % columns) + 1]
            cmap = "gray" if array.ndim == 2 else None
            left.imshow(array, cmap=cmap, vmin=0, vmax=255)
            right.imshow(array, cmap=cmap, vmin=0, vmax=255)
            right.imshow(np.asarray(heat, dtype=float), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
                         interpolation="bilinear", extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            if index < columns:
                left.set_title("Input")
                right.set_title("Attention rollout")
        if title:
            figure.suptitle(title)
        return save(figure, out_stem)


def filters_figure(filters: np.ndarray, out_stem: str | os.PathLike, explained: Sequence[float] | None = None,
                   columns: int = 7, title: str = "RGB embedding filters (first principal components)") -> Path:
    """Components ``[k, C, P, P]``, each scaled to its own range; RGB when C = 3, grey otherwise. One mosaic image
    (white gaps) with a label under each tile: quick to draw even for many components."""
    filters = np.asarray(filters, dtype=float)
    if filters.ndim != 4 or filters.shape[1] not in (1, 3):
        raise ShapeError(f"filters_figure expects [k, 1 or 3, P, P], got shape {filters.shape}")
    count, _, height, width = filters.shape
    columns = min(columns, count)
    rows = -(-count // columns)
    gap = max(1, height // 4)
    mosaic = np.ones((rows * (height + gap) - gap, columns * (width + gap) - gap, 3))
    for index, component in enumerate(filters):
        scaled = (component - component.min()) / max(component.max() - component.min(), 1e-12)
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        mosaic[top:top + height, left:left + width] = np.repeat(scaled, 3, axis=0).transpose(1, 2, 0) \
            if scaled.shape[0] == 1 else scaled.transpose(1, 2, 0)
    with style():
        figure = new_figure(min(1.0 * columns, 8.0) + 0.3, min(1.0 * rows, 8.0) + 0.7)
        axis = figure.add_subplot()
        axis.imshow(mosaic, interpolation="nearest")
        axis.set_axis_off()
        for index in range(count):
            label = f"PC {index + 1}" + (f" ({100 * explained[index]:.0f}%)" if explained is not None else "")
            axis.text((index % columns) * (width + gap) + (width - 1) / 2, (index // columns) * (height + gap) + height,
                      label, ha="center", va="top", fontsize=6)
        axis.set_title(title)
        return save(figure, out_stem)


def similarity_mosaic(similarity: np.ndarray, gap: int = 1) -> np.ndarray:
    """``[gh, gw, gh, gw]`` -> one image of gh x gw tiles (tile (i, j) = similarity of patch (i, j) with all),
    tiles separated by ``gap`` NaN pixels (drawn as background)."""
    gh, gw = similarity.shape[:2]
    mosaic = np.full((gh * (gh + gap) - gap, gw * (gw + gap) - gap), np.nan)
    for i in range(gh):
        for j in range(gw):
            top, left = i * (gh + gap), j * (gw + gap)
            mosaic[top:top + gh, left:left + gw] = similarity[i, j]
    return mosaic


def similarity_figure(similarity: np.ndarray, out_stem: str | os.PathLike,
                      title: str = "Position embedding similarity") -> Path:
    """The paper's Figure 7 (centre) for a ``[gh, gw, gh, gw]`` cosine-similarity array."""
    similarity = np.asarray(similarity, dtype=float)
    if similarity.ndim != 4 or similarity.shape[:2] != similarity.shape[2:]:
        raise ShapeError(f"similarity_figure expects [gh, gw, gh, gw], got shape {similarity.shape}")
    gh, gw = similarity.shape[:2]
    mosaic = similarity_mosaic(similarity)
    side = min(7.0, 2.0 + 0.35 * max(gh, gw))
    with style():
        figure = new_figure(side + 1.0, side)
        axis = figure.add_subplot()
        axis.grid(False)
        cmap = colormaps["viridis"].with_extremes(bad="white")
        shown = axis.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        every = max(1, -(-max(gh, gw) // 14))  # at most ~14 labels per axis
        axis.set_xticks([j * (gw + 1) + (gw - 1) / 2 for j in range(0, gw, every)], [str(j + 1) for j in range(0, gw, every)])
        axis.set_yticks([i * (gh + 1) + (gh - 1) / 2 for i in range(0, gh, every)], [str(i + 1) for i in range(0, gh, every)])
        axis.tick_params(length=0)
        for spine in axis.spines.values():
            spine.set_visible(False)
        axis.set_xlabel("Input patch column")
        axis.set_ylabel("Input patch row")
        axis.set_title(title)
        figure.colorbar(shown, ax=axis, shrink=0.8, label="Cosine similarity")
        return save(figure, out_stem)


def distance_figure(distances: np.ndarray, out_stem: str | os.PathLike, max_pixels: float | None = None,
                    title: str | None = None) -> Path:
    """``[layers, heads]`` mean attention distances (pixels): one colour per head, depth on the x axis."""
    distances = np.asarray(distances, dtype=float)
    if distances.ndim != 2:
        raise ShapeError(f"distance_figure expects [layers, heads], got shape {distances.shape}")
    layers, heads = distances.shape
    colours = colormaps["tab20" if heads > 10 else "tab10"]
    with style():
        figure = new_figure(5.2, 3.6)
        axis = figure.add_subplot()
        depth = np.arange(1, layers + 1)
        for head in range(heads):
            axis.scatter(depth, distances[:, head], s=18, color=colours(head % colours.N), label=f"Head {head + 1}",
                         zorder=3)
        axis.set_xlabel("Network depth (layer)")
        axis.set_ylabel("Mean attention distance (pixels)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlim(0.5, layers + 0.5)
        top = max_pixels if max_pixels else float(distances.max()) * 1.1
        axis.set_ylim(0, max(top, float(distances.max()) * 1.05, 1e-6))
        legend_columns = 1 if heads <= 8 else 2
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=legend_columns, title="Head",
                    markerscale=1.2, frameon=False)
        if title:
            axis.set_title(title)
        return save(figure, out_stem)
