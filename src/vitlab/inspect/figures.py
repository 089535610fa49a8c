"""PNG figures for inspection, drawn with Pillow alone (no plotting library needed on a training box)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

# A perceptually ordered ramp (dark blue -> teal -> yellow), interpolated between anchors.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colorize(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with the ramp above."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def _to_rgb(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] (1 or 3 channels) -> [H, W, 3]."""
    array = image.detach().cpu().numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return array.transpose(1, 2, 0).astype(np.uint8)


def heatmap_overlay(image: torch.Tensor, heat: torch.Tensor, size: int = 160, alpha: float = 0.55) -> Image.Image:
    """The image side by side with the image tinted by ``heat`` ([gh, gw] in [0, 1])."""
    base = Image.fromarray(_to_rgb(image)).resize((size, size), Image.BILINEAR)
    heat_image = Image.fromarray(colorize(heat.cpu().numpy())).resize((size, size), Image.BILINEAR)
    blended = Image.blend(base, heat_image, alpha)
    pair = Image.new("RGB", (2 * size + 4, size), "white")
    pair.paste(base, (0, 0))
    pair.paste(blended, (size + 4, 0))
    return pair


def tile(images: list[Image.Image], columns: int, gap: int = 4) -> Image.Image:
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), "white")
    for index, image in enumerate(images):
        sheet.paste(image, ((index % columns) * (width + gap), (index // columns) * (height + gap)))
    return sheet


def similarity_figure(similarity: torch.Tensor, cell: int = 12) -> Image.Image:
    """The paper's Figure 7 (centre): one tile per patch, each showing its similarity to every other patch."""
    gh, gw = similarity.shape[:2]
    low, high = similarity.min().item(), similarity.max().item()
    scaled = (similarity - low) / max(high - low, 1e-12)
    tiles = [
        Image.fromarray(colorize(scaled[i, j].cpu().numpy())).resize((gw * cell // 2 or 1, gh * cell // 2 or 1), Image.NEAREST)
        for i in range(gh)
        for j in range(gw)
    ]
    return tile(tiles, columns=gw, gap=2)


def filters_figure(filters: torch.Tensor, cell: int = 40) -> Image.Image:
    """Principal components of the embedding filters, each scaled to its own range (the paper's Figure 7, left)."""
    tiles = []
    for component in filters:
        array = component.detach().cpu().numpy()
        array = (array - array.min()) / max(array.max() - array.min(), 1e-12)
        if array.shape[0] == 1:
            rgb = (colorize(array[0]))
        else:
            rgb = (array[:3].transpose(1, 2, 0) * 255).astype(np.uint8)
        tiles.append(Image.fromarray(rgb).resize((cell, cell), Image.NEAREST))
    return tile(tiles, columns=min(7, len(tiles)))


def distance_figure(distances: torch.Tensor, max_pixels: float, size: tuple[int, int] = (480, 320)) -> Image.Image:
    """Mean attention distance per head (dots) against layer depth (the paper's Figure 7, right)."""
    layers, heads = distances.shape
    width, height = size
    margin = 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line([(margin, margin // 2), (margin, height - margin), (width - 10, height - margin)], fill="black")
    draw.text((margin, height - margin + 8), "network depth (layer)", fill="black")
    draw.text((4, 4), f"mean attention distance (px, max {max_pixels:.0f})", fill="black")
    for layer in range(layers):
        x = margin + (layer + 0.5) * (width - margin - 10) / layers
        for head in range(heads):
            y = height - margin - distances[layer, head].item() / max(max_pixels, 1e-12) * (height - 1.5 * margin)
            colour = tuple(int(c) for c in colorize(head / max(heads - 1, 1)))
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    return image
