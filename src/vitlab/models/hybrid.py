"""The ResNet stem of the hybrid models (Section 3.1, "Hybrid Architecture"; Appendix D.2 of the paper).

The input sequence of the ViT is the feature map of a ResNet, cut into 1x1 "patches" and projected to the token
width. The ResNet is the one of the official code (vit_jax/models_resnet.py), which differs from BiT's: units are
post-activation (v1.5 style: conv -> GroupNorm -> ReLU, stride on the 3x3, ``relu(shortcut + branch)``), the stem
normalises before pooling (7x7/2 conv -> GroupNorm -> ReLU -> 3x3/2 max-pool), every conv and the pool use
TensorFlow SAME padding, and the last GroupNorm of each unit starts with a zero scale (so units start as identity).

Numerics: ``cfg.ws_style`` picks how the two references compute the normalisations (:data:`NUMERICS`); official
checkpoints keep "official", timm conversions use "timm" so that their logits agree to float precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.layers import check_image_shape, hybrid_stride, lecun_normal_
from vitlab.models.resnet import StdConv2d, pad_same

if TYPE_CHECKING:
    from vitlab.models.vit import ViTConfig


@dataclass(frozen=True)
class Numerics:
    ws: str  # weight-standardisation formula, see vitlab.models.resnet.WS_STYLES
    gn_eps: float


# "official": vit_jax divides by (jnp.std + eps) and uses flax.linen.GroupNorm, whose default epsilon is 1e-6.
# "timm": StdConv2dSame standardises with F.batch_norm, i.e. sqrt(var + eps), and GroupNormAct has eps 1e-5.
# The weight-standardisation eps itself is ViTConfig.ws_eps (official 1e-5, timm 1e-8).
NUMERICS: dict[str, Numerics] = {
    "official": Numerics(ws="std", gn_eps=1e-6),
    "timm": Numerics(ws="var", gn_eps=1e-5),
}
GN_GROUPS = 32


def numerics_of(cfg: "ViTConfig") -> Numerics:
    if cfg.ws_style not in NUMERICS:
        raise ConfigError(f"ws_style={cfg.ws_style!r} is unknown; expected one of {', '.join(NUMERICS)}")
    return NUMERICS[cfg.ws_style]


class _Layers:
    """Builds the convs and norms of one numerics setting, so units do not repeat the options."""

    def __init__(self, cfg: "ViTConfig") -> None:
        self.numerics, self.ws_eps = numerics_of(cfg), cfg.ws_eps

    def conv(self, in_chans: int, out_chans: int, kernel: int, stride: int = 1) -> StdConv2d:
        return StdConv2d(in_chans, out_chans, kernel, stride, padding="same", eps=self.ws_eps, style=self.numerics.ws)

    def norm(self, channels: int, zero_scale: bool = False) -> nn.GroupNorm:
        if channels % GN_GROUPS:
            raise ConfigError(f"hybrid ResNet: {channels} channels cannot be split into {GN_GROUPS} GroupNorm groups")
        norm = nn.GroupNorm(GN_GROUPS, channels, eps=self.numerics.gn_eps)
        if zero_scale:
            nn.init.zeros_(norm.weight)
        return norm


class ShortcutProjection(nn.Module):
    """1x1 (strided) conv + GroupNorm on the shortcut when a unit changes shape."""

    def __init__(self, layers: _Layers, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv = layers.conv(in_chans, out_chans, 1, stride)
        self.norm = layers.norm(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation unit: ``relu(shortcut(x) + gn3(conv3(relu(gn2(conv2(relu(gn1(conv1(x)))))))))``."""

    def __init__(self, layers: _Layers, in_chans: int, mid_chans: int, stride: int) -> None:
        super().__init__()
        out_chans = 4 * mid_chans
        self.conv1 = layers.conv(in_chans, mid_chans, 1)
        self.norm1 = layers.norm(mid_chans)
        self.conv2 = layers.conv(mid_chans, mid_chans, 3, stride)
        self.norm2 = layers.norm(mid_chans)
        self.conv3 = layers.conv(mid_chans, out_chans, 1)
        self.norm3 = layers.norm(out_chans, zero_scale=True)
        needs_projection = stride != 1 or in_chans != out_chans
        self.shortcut = ShortcutProjection(layers, in_chans, out_chans, stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(shortcut + y)


class HybridStem(nn.Module):
    """7x7/2 conv -> GroupNorm -> ReLU -> 3x3/2 max-pool (SAME, padded with -inf): stride 4."""

    def __init__(self, layers: _Layers, in_chans: int, width: int) -> None:
        super().__init__()
        self.conv = layers.conv(in_chans, width, 7, 2)
        self.norm = layers.norm(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(images)))
        return F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), kernel_size=3, stride=2)


class HybridEmbed(nn.Module):
    """Image -> ResNet feature map -> patch_size x patch_size conv (1x1 in the paper) -> tokens ``[B, N, D]``.

    Stages follow ``cfg.hybrid_layers``: stage ``i`` has ``hybrid_width * 2**i`` bottleneck channels (4x that out),
    the first stage keeps the stem's stride 4 and each later one halves the map (stride 16 for three stages,
    32 for four). No stages (``hybrid_layers=()``): the patches are cut from the stem's stride-4 map.
    """

    def __init__(self, cfg: "ViTConfig") -> None:
        super().__init__()
        if cfg.hybrid_layers is None:
            raise ConfigError("a hybrid embedding needs hybrid_layers (units per stage; [] for the stem alone)")
        self.in_chans, self.img_size, self.patch_size = cfg.in_chans, cfg.img_size, cfg.patch_size
        self.stride = hybrid_stride(cfg.hybrid_layers)  # of the feature map: a power of 2
        layers = _Layers(cfg)
        self.stem = HybridStem(layers, cfg.in_chans, cfg.hybrid_width)
        in_chans, stages = cfg.hybrid_width, []
        for index, units in enumerate(cfg.hybrid_layers):
            mid, stride = cfg.hybrid_width * 2**index, 1 if index == 0 else 2
            blocks = []
            for unit in range(units):
                blocks.append(Bottleneck(layers, in_chans, mid, stride if unit == 0 else 1))
                in_chans = 4 * mid
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.num_features = in_chans  # channels of the feature map the tokens are cut from
        self.proj = nn.Conv2d(in_chans, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        lecun_normal_(self.proj.weight)  # the official embedding init (Flax's Conv default)
        nn.init.zeros_(self.proj.bias)

    def feature_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Size of the ResNet feature map: every stride-2 SAME op maps ``n`` to ``ceil(n / 2)``."""
        halvings = self.stride.bit_length() - 1  # stem conv, stem pool, one per stage after the first
        size = list(img_size)
        for _ in range(halvings):
            size = [math.ceil(s / 2) for s in size]
        return size[0], size[1]

    def grid_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """The token grid for an input size (what the position embeddings must cover)."""
        fh, fw = self.feature_size(img_size)
        return fh // self.patch_size, fw // self.patch_size

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The ResNet feature map ``[B, C, H/stride, W/stride]`` before the token projection."""
        check_image_shape(images, self.in_chans, self.img_size)
        x = self.stem(images)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.forward_features(images)).flatten(2).transpose(1, 2)  # [B, N, D]
