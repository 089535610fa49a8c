"""Small variants of every family, with noise on every parameter so that heads and norms matter."""
from __future__ import annotations

import torch

import vitlab


def jittered(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return model.eval()


def small_vit(classifier: str = "token", **overrides) -> torch.nn.Module:
    fields = dict(num_classes=5, img_size=32, depth=2, width=48, mlp_dim=96, num_heads=3, classifier=classifier)
    fields.update(overrides)
    return jittered(vitlab.create_model("vit_ti8", **fields))


def small_bit(**overrides) -> torch.nn.Module:
    fields = dict(num_classes=5, img_size=32, layers=(1, 1), width_factor=1)  # official stem and 32 groups
    fields.update(overrides)
    return jittered(vitlab.create_model("bit_r50x1", **fields))


def small_hybrid(**overrides) -> torch.nn.Module:
    fields = dict(num_classes=5, img_size=32, width=48, depth=1, num_heads=3, mlp_dim=96,
                  hybrid_layers=(1, 1), hybrid_width=32)
    fields.update(overrides)
    return jittered(vitlab.create_model("r50_vit_b16", **fields))
