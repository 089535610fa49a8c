"""Small pieces shared by the model families (ViT, its hybrid ResNet stem): initialisers, shape checks, strides.

They live here, below ``vit.py`` and ``hybrid.py``, so that both import them and neither imports the other's
insides: the ViT builds the hybrid stem, the stem only needs these helpers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vitlab.errors import ShapeError
from vitlab.models.counts import hybrid_stride  # noqa: F401  (one rule, in the torch-free module `vitlab models` reads)


def lecun_normal_(tensor: torch.Tensor) -> torch.Tensor:
    """Flax's ``lecun_normal``: truncated normal (at 2 std) with variance 1 / fan_in."""
    fan_in = tensor[0].numel()
    # 0.8796... is the std of a unit normal truncated to [-2, 2]; dividing by it restores the intended variance.
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def check_image_shape(images: torch.Tensor, in_chans: int, img_size: tuple[int, int]) -> None:
    """A clear error instead of a shape mismatch deep inside a conv or the position embedding."""
    if images.ndim != 4:
        raise ShapeError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] != in_chans:
        raise ShapeError(f"expected {in_chans} input channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if tuple(images.shape[2:]) != tuple(img_size):
        raise ShapeError(
            f"expected {img_size[0]}x{img_size[1]} images, got {images.shape[2]}x{images.shape[3]}; "
            "resize the input or call model.set_input_size()"
        )
