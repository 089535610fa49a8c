"""What the attention looks at (Section 4.5, Figures 6 and 7).

``attention_rollout`` (Abnar & Zuidema, 2020), as the paper uses for Figure 6: average the heads, add the identity for
the residual path, renormalise rows, and multiply the layers' matrices. ``mean_attention_distance`` (Figure 7): per
head and layer, the pixel distance between a query patch and the patches it attends to, weighted by attention and
averaged over queries and images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from vitlab.errors import ShapeError


def attention_rollout(maps: list[torch.Tensor], add_residual: bool = True) -> torch.Tensor:
    """Attention flow from the input to the last layer: ``[B, N, N]`` from per-layer ``[B, heads, N, N]`` maps."""
    if not maps:
        raise ShapeError("attention_rollout needs at least one attention map")
    joint = None
    for layer in maps:
        mixed = layer.float().mean(dim=1)  # [B, N, N], heads averaged
        if add_residual:
            mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device)
            mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        joint = mixed if joint is None else mixed @ joint
    return joint


def rollout_from_maps(maps: list[torch.Tensor], grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Class-token rollout over the token grid, scaled to [0, 1] per image: ``[B, gh, gw]``.

    Models without a class token (GAP) use the mean over all query tokens instead.
    """
    joint = attention_rollout(maps)
    flow = joint[:, 0, num_prefix_tokens:] if num_prefix_tokens else joint.mean(dim=1)
    heat = flow.reshape(-1, *grid)
    low = heat.flatten(1).min(dim=1).values[:, None, None]
    high = heat.flatten(1).max(dim=1).values[:, None, None]
    return (heat - low) / (high - low).clamp_min(1e-12)


def rollout_heatmap(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """:func:`rollout_from_maps` of ``model``'s attention on ``images``: ``[B, gh, gw]``."""
    return rollout_from_maps(model.get_attention_maps(images), model.config.grid_size,
                             getattr(model, "num_prefix_tokens", 1))


def token_pixels(model: torch.nn.Module) -> int:
    """Input pixels per token side: the patch size, times the ResNet's stride for a hybrid (a 1x1 patch of a
    stride-16 feature map covers 16 pixels)."""
    cfg = model.config
    return int(cfg.patch_size * cfg.total_stem_stride)


def attention_batch_size(model: torch.nn.Module, budget_bytes: int = 256 * 2**20, limit: int = 32) -> int:
    """Images per forward pass so that one pass's attention maps (all layers, fp32) stay within ``budget_bytes``.

    A pass keeps ``depth x heads x N^2`` floats per image (N tokens): 1.4 GB for ViT-Ti/4 at 224 px, so the batch
    shrinks with the token count instead of holding every image's maps at once.
    """
    cfg = model.config
    tokens = cfg.grid_size[0] * cfg.grid_size[1] + getattr(model, "num_prefix_tokens", 1)
    per_image = cfg.depth * cfg.num_heads * tokens * tokens * 4
    return int(max(1, min(limit, budget_bytes // per_image)))


@dataclass
class AttentionSummary:
    """What :func:`summarise_attention` keeps: per-image rollouts of the first images, distances over all."""

    rollout: torch.Tensor  # [num_rollout, gh, gw] in [0, 1]
    distances: torch.Tensor  # [layers, heads] pixels, mean over images and queries
    images: int  # images averaged into ``distances``


@torch.no_grad()
def summarise_attention(model: torch.nn.Module, batches: Iterable[torch.Tensor], num_rollout: int) -> AttentionSummary:
    """Reduce attention batch by batch: each batch's maps become rollouts (while fewer than ``num_rollout``) and
    a running distance sum, then are dropped, so memory does not grow with the number of images."""
    cfg = model.config
    prefix = getattr(model, "num_prefix_tokens", 1)
    total: torch.Tensor | None = None
    count = 0
    heat: list[torch.Tensor] = []
    for images in batches:
        maps = model.get_attention_maps(images)
        wanted = num_rollout - sum(len(h) for h in heat)
        if wanted > 0:
            heat.append(rollout_from_maps([m[:wanted] for m in maps], cfg.grid_size, prefix).cpu())
        distances = mean_attention_distance(maps, cfg.grid_size, token_pixels(model), prefix).cpu()
        total = distances * len(images) if total is None else total + distances * len(images)
        count += len(images)
        del maps
    if total is None:
        raise ShapeError("no images to inspect")
    return AttentionSummary(torch.cat(heat), total / count, count)


def mean_attention_distance(
    maps: list[torch.Tensor], grid: tuple[int, int], patch_size: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """``[layers, heads]`` mean distance in pixels that each head attends over (patch-to-patch attention)."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=1).float() * patch_size  # [N, 2] pixels
    distance = torch.cdist(centres, centres)  # [N, N]
    out = []
    for layer in maps:
        patch_attn = layer[:, :, num_prefix_tokens:, num_prefix_tokens:].float()  # [B, H, N, N]
        if patch_attn.shape[-1] != gh * gw:
            raise ShapeError(f"attention over {patch_attn.shape[-1]} patches does not fit a {gh}x{gw} grid")
        patch_attn = patch_attn / patch_attn.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        per_query = (patch_attn * distance.to(patch_attn.device)).sum(dim=-1)  # [B, H, N]
        out.append(per_query.mean(dim=(0, 2)))
    return torch.stack(out)  # [layers, heads]
