"""What the attention looks at (Section 4.5, Figures 6 and 7).

``attention_rollout`` (Abnar & Zuidema, 2020), as the paper uses for Figure 6: average the heads, add the identity for
the residual path, renormalise rows, and multiply the layers' matrices. ``mean_attention_distance`` (Figure 7): per
head and layer, the pixel distance between a query patch and the patches it attends to, weighted by attention and
averaged over queries and images.
"""
from __future__ import annotations

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


def rollout_heatmap(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class-token rollout over the patch grid, scaled to [0, 1] per image: ``[B, gh, gw]``.

    Models without a class token (GAP) use the mean over all query tokens instead.
    """
    maps = model.get_attention_maps(images)
    joint = attention_rollout(maps)
    prefix = getattr(model, "num_prefix_tokens", 1)
    flow = joint[:, 0, prefix:] if prefix else joint.mean(dim=1)
    grid = model.config.grid_size
    heat = flow.reshape(-1, *grid)
    low = heat.flatten(1).min(dim=1).values[:, None, None]
    high = heat.flatten(1).max(dim=1).values[:, None, None]
    return (heat - low) / (high - low).clamp_min(1e-12)


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
