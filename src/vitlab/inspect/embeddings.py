"""What the embeddings learned (Section 4.5, Figure 7 left and centre).

``position_similarity``: cosine similarity between the position embedding of each patch and those of all the others
(the paper's 7x7 tiles). ``embedding_filters``: principal components of the patch-embedding filters (the paper shows the
first 28 of ViT-L/32).
"""
from __future__ import annotations

import torch

from vitlab.errors import ConfigError


def patch_position_table(model: torch.nn.Module) -> torch.Tensor:
    """Position embeddings of the patches only, ``[gh*gw, D]`` (prefix tokens dropped)."""
    posemb = model.pos_embed
    prefix = getattr(model, "num_prefix_tokens", 1)
    if hasattr(posemb, "weight"):
        table = posemb.weight[0]
    elif hasattr(posemb, "table"):
        table = posemb.table() if callable(posemb.table) else posemb.table[0]
        table = table[0] if table.ndim == 3 else table
    else:
        raise ConfigError(f"model has posemb={model.config.posemb!r}: there are no position embeddings to compare")
    return table[prefix:].detach().float()


def position_similarity(model: torch.nn.Module) -> torch.Tensor:
    """``[gh, gw, gh, gw]``: entry (i, j, y, x) is the cosine similarity of patch (i, j)'s embedding with (y, x)'s."""
    table = torch.nn.functional.normalize(patch_position_table(model), dim=-1)
    gh, gw = model.config.grid_size
    return (table @ table.T).reshape(gh, gw, gh, gw)


def first_layer_weight(model: torch.nn.Module) -> torch.Tensor:
    """The filters that see pixels: the patch embedding of a ViT, the ResNet root's 7x7 convolution of a hybrid
    (whose patch embedding sees feature-map channels, not colours)."""
    if model.config.is_hybrid:
        return model.patch_embed.stem.conv.weight.detach().float()  # [width, C, 7, 7]
    return model.patch_embed.proj.weight.detach().float()  # [D, C, P, P]


def embedding_filters(model: torch.nn.Module, components: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Top principal components of the first-layer filters: ``([k, C, P, P], explained variance ratio [k])``."""
    weight = first_layer_weight(model)
    flat = weight.flatten(1)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, singular, v_t = torch.linalg.svd(flat, full_matrices=False)
    k = min(components, v_t.shape[0])
    variance = singular**2
    return v_t[:k].reshape(k, *weight.shape[1:]), (variance[:k] / variance.sum())
