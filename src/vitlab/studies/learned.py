"""Figure 7 as numbers: what a trained ViT's attention and position embeddings show, reduced to a few scalars.

The paper shows pictures; a verdict needs numbers:

* ``attn_distance_slope``: least-squares slope (pixels per layer) of the mean attention distance, averaged over
  heads, against depth ("distance increases with network depth").
* ``attn_first_min`` / ``attn_first_max``: the smallest and largest head distance of the lowest layer, and
  ``attn_global_ratio``: the largest divided by the distance uniform attention would give ("some heads attend to
  most of the image already in the lowest layers").
* ``posemb_distance_corr``: Pearson correlation, over patch pairs, between the cosine similarity of two patches'
  position embeddings and their grid distance (negative: closer patches have more similar embeddings).
* ``posemb_rowcol_gap``: at each Manhattan distance, mean similarity of pairs that share a row or column minus
  that of pairs that do not, averaged over distances ("row-column structure").
"""
from __future__ import annotations

import torch

from vitlab.inspect.attention import mean_attention_distance
from vitlab.inspect.embeddings import position_similarity


def uniform_attention_distance(grid: tuple[int, int], patch_size: int) -> float:
    """Mean distance (pixels) of a query that attends equally to every patch, averaged over queries."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=1).float() * patch_size
    return float(torch.cdist(centres, centres).mean())


def attention_numbers(distances: torch.Tensor, grid: tuple[int, int], patch_size: int) -> dict[str, float]:
    """The attention scalars from a ``[layers, heads]`` mean-distance table."""
    per_layer = distances.float().mean(dim=1)  # [layers]
    depth = torch.arange(len(per_layer), dtype=torch.float32)
    centred = depth - depth.mean()
    slope = float((centred * (per_layer - per_layer.mean())).sum() / centred.pow(2).sum().clamp_min(1e-12))
    first = distances[0].float()
    return {
        "attn_distance_slope": slope,
        "attn_first_min": float(first.min()),
        "attn_first_max": float(first.max()),
        "attn_global_ratio": float(first.max()) / uniform_attention_distance(grid, patch_size),
    }


def similarity_numbers(similarity: torch.Tensor) -> dict[str, float]:
    """The position-embedding scalars from a ``[gh, gw, gh, gw]`` cosine-similarity table."""
    gh, gw = similarity.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy, dx = (ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs()
    sim = similarity.reshape(gh * gw, gh * gw).float()
    off = ~torch.eye(gh * gw, dtype=torch.bool)
    distance = (dy.float() ** 2 + dx.float() ** 2).sqrt()[off]
    values = sim[off]
    corr = float(torch.corrcoef(torch.stack([values, distance]))[0, 1])
    manhattan = dy + dx
    line = (dy == 0) | (dx == 0)
    gaps = []
    for d in range(2, int(manhattan.max()) + 1):  # distance 1 has only row/column pairs
        same, other = (manhattan == d) & line & off, (manhattan == d) & ~line
        if same.any() and other.any():
            gaps.append(float(sim[same].mean() - sim[other].mean()))
    return {"posemb_distance_corr": corr, "posemb_rowcol_gap": sum(gaps) / len(gaps) if gaps else float("nan")}


@torch.no_grad()
def learned_numbers(model: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Every Figure-7 scalar of a trained ViT on ``images`` (``[B, C, H, W]``, preprocessed as in training)."""
    model.eval()
    grid, patch = model.config.grid_size, model.config.patch_size * model.config.total_stem_stride
    maps = model.get_attention_maps(images)
    distances = mean_attention_distance(maps, grid, patch, getattr(model, "num_prefix_tokens", 1))
    numbers = attention_numbers(distances, grid, patch)
    if model.config.posemb in ("learned", "learned_2d"):
        numbers.update(similarity_numbers(position_similarity(model)))
    return numbers
