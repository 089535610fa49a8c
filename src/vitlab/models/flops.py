"""Multiply-accumulates of one forward pass, counted from the operators torch actually runs.

The model is built on the meta device and run once under ``torch.utils.flop_counter.FlopCounterMode``, so
counting H/14 costs no memory and every family (ViT, BiT, hybrid) is counted the same way, attention included.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_macs(name: str, img_size: int = 224, num_classes: int = 1000, **overrides: Any) -> int:
    """MACs of one image's forward pass (FLOPs / 2) for a named model."""
    from vitlab.models.registry import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, img_size=img_size, **overrides)
        size = model.config.img_size if hasattr(model.config, "img_size") else (img_size, img_size)
        if isinstance(size, int):
            size = (size, size)
        images = torch.empty(1, model.config.in_chans, *size)
    return count_model_macs(model, images)


def count_model_macs(model: torch.nn.Module, images: torch.Tensor, *, last_block_cls_only: bool = False) -> int:
    """MACs of ``model(images)`` per image; ``images`` may live on the meta device.

    By default the architecture's MACs, the figure papers and other libraries publish (a ViT's plain forward
    pass). ``last_block_cls_only=True`` counts what the classification objective runs on a model that offers the
    shortcut (see ``VisionTransformer.forward_features``); other models are counted in full either way.
    """
    shortcut = last_block_cls_only and getattr(model, "offers_last_block_cls_only", False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images, last_block_cls_only=True) if shortcut else model(images)
    return counter.get_total_flops() // (2 * images.shape[0])


def count_params(name: str, img_size: int = 224, num_classes: int = 1000, **overrides: Any) -> int:
    from vitlab.models.registry import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, img_size=img_size, **overrides)
    return sum(p.numel() for p in model.parameters())

