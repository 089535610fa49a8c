"""BiT ResNet-v2 (Kolesnikov et al., 2020): the convolutional baseline the ViT paper compares against.

Pre-activation bottleneck units (GroupNorm -> ReLU -> conv, He et al. 2016b) with GroupNorm of 32 groups and
weight-standardised convolutions, so that nothing depends on the batch. Stem: 7x7/2 conv (padding 3), a zero pad of
1 and a 3x3/2 max-pool (the official code pads with zeros, not -inf, before a VALID pool). Head: GroupNorm -> ReLU ->
global average pool -> zero-initialised linear layer.

Defaults follow the official BiT code (google-research/big_transfer): weights standardised as
``(w - mean) / sqrt(var + 1e-10)`` and GroupNorm eps 1e-5. timm computes the same formula with eps 1e-8; its
converter sets ``ws_eps`` accordingly (a config field, not a different code path).

The building blocks here (:class:`StdConv2d`, :func:`same_padding`) are shared with the hybrid's ResNet.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError, ShapeError

# Weight standardisation formulas: "std" = (w - mean) / (std + eps) (official ViT hybrid, jnp.std);
# "var" = (w - mean) / sqrt(var + eps) (official BiT, timm). Both use the population statistics over (I, kh, kw).
WS_STYLES = ("std", "var")
STAGE_CHANNELS = (256, 512, 1024, 2048)  # output channels of the four ResNet-50 stages at width factor 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding along one axis: ``(before, after)``, the extra pixel going after.

    The output has ``ceil(size / stride)`` positions, which is why stride-2 convs of the official code see an
    asymmetric pad (e.g. (2, 3) for the 7x7/2 stem on an even input) that a symmetric torch padding cannot express.
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad a ``[B, C, H, W]`` map so that a kernel/stride window op behaves like TensorFlow's SAME."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def standardize_weight(weight: torch.Tensor, eps: float, style: str) -> torch.Tensor:
    """Per output channel, subtract the mean and divide by the spread of the kernel (population statistics).

    "var" is exactly what a training-mode batch norm computes over a ``[1, O, I*kh*kw]`` view, so it runs as that
    one fused kernel; this also rounds like timm's implementation, which keeps float32 parity with timm at ~1e-7
    instead of ~1e-5 (a deep random network amplifies rounding differences of the standardised kernels).
    """
    if style == "var":
        flat = weight.reshape(1, weight.shape[0], -1)
        return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=eps).reshape_as(weight)
    var, mean = torch.var_mean(weight, dim=(1, 2, 3), unbiased=False, keepdim=True)
    return (weight - mean) / (var.sqrt() + eps)


class StdConv2d(nn.Conv2d):
    """Bias-free convolution whose kernel is weight-standardised on every call (Qiao et al., 2019).

    ``padding`` is a symmetric int (BiT) or ``"same"`` (TensorFlow SAME, computed from the input size; the hybrid).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int,
        stride: int = 1,
        *,
        padding: int | str = 0,
        eps: float = 1e-10,
        style: str = "var",
    ) -> None:
        if style not in WS_STYLES:
            raise ConfigError(f"weight standardisation style {style!r} is unknown; expected one of {WS_STYLES}")
        self.same = padding == "same"
        super().__init__(in_chans, out_chans, kernel_size, stride, padding=0 if self.same else padding, bias=False)
        self.eps, self.style = eps, style

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        weight = standardize_weight(self.weight, self.eps, self.style)
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)


@dataclass
class BiTConfig:
    """Everything that defines a BiT ResNet-v2. Depths and widths of the named variants live in the registry."""

    layers: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck units per stage
    width_factor: int = 1  # the "x3" of R50x3: multiplies every channel count
    img_size: tuple[int, int] = (224, 224)  # nominal input size (for GMACs and bookkeeping); any size works
    in_chans: int = 3
    num_classes: int = 1000  # 0 = no head (features only)
    stem_width: int = 64  # stem channels at width factor 1
    gn_groups: int = 32
    gn_eps: float = 1e-5
    ws_eps: float = 1e-10  # official BiT; timm uses 1e-8

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(s) for s in self.img_size)  # type: ignore[assignment]
        self.layers = tuple(int(n) for n in self.layers)
        if not 1 <= len(self.layers) <= len(STAGE_CHANNELS) or min(self.layers) < 1:
            raise ConfigError(
                f"layers must list 1 to {len(STAGE_CHANNELS)} positive unit counts per stage, got {self.layers}"
            )
        for name in ("width_factor", "in_chans", "stem_width", "gn_groups"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        for channels in (self.stem_width * self.width_factor, *self.mid_channels):
            if channels % self.gn_groups:
                raise ConfigError(f"{channels} channels cannot be split into gn_groups={self.gn_groups} groups")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(c * self.width_factor for c in STAGE_CHANNELS[: len(self.layers)])

    @property
    def mid_channels(self) -> tuple[int, ...]:
        return tuple(c // 4 for c in self.stage_channels)

    @property
    def num_features(self) -> int:
        return self.stage_channels[-1]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _norm(cfg: BiTConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.gn_groups, channels, eps=cfg.gn_eps)


def _conv(cfg: BiTConfig, in_chans: int, out_chans: int, kernel: int, stride: int = 1) -> StdConv2d:
    """BiT's convs pad symmetrically (k // 2), as the official code does."""
    return StdConv2d(in_chans, out_chans, kernel, stride, padding=kernel // 2, eps=cfg.ws_eps, style="var")


class PreActBottleneck(nn.Module):
    """ResNet-v2 unit: ``x + conv3(relu(gn3(conv2(relu(gn2(conv1(relu(gn1(x)))))))))``; the stride sits on the 3x3.

    The projection shortcut (when the shape changes) reads the pre-activated input, as in the official code.
    """

    def __init__(self, cfg: BiTConfig, in_chans: int, mid_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.norm1 = _norm(cfg, in_chans)
        self.conv1 = _conv(cfg, in_chans, mid_chans, 1)
        self.norm2 = _norm(cfg, mid_chans)
        self.conv2 = _conv(cfg, mid_chans, mid_chans, 3, stride)
        self.norm3 = _norm(cfg, mid_chans)
        self.conv3 = _conv(cfg, mid_chans, out_chans, 1)
        needs_projection = stride != 1 or in_chans != out_chans
        self.shortcut = _conv(cfg, in_chans, out_chans, 1, stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.norm1(x))
        shortcut = x if self.shortcut is None else self.shortcut(preact)
        y = self.conv1(preact)
        y = self.conv2(F.relu(self.norm2(y)))
        y = self.conv3(F.relu(self.norm3(y)))
        return y + shortcut


class BiTStem(nn.Module):
    """7x7/2 weight-standardised conv, zero pad 1, 3x3/2 max-pool: ``[B, C, H, W] -> [B, 64*wf, H/4, W/4]``."""

    def __init__(self, cfg: BiTConfig) -> None:
        super().__init__()
        width = cfg.stem_width * cfg.width_factor
        self.conv = _conv(cfg, cfg.in_chans, width, 7, 2)  # padding 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv(images)
        return F.max_pool2d(F.pad(x, (1, 1, 1, 1)), kernel_size=3, stride=2)


class ResNetV2(nn.Module):
    """BiT ResNet-v2 with the uniform model face (forward_features / forward_head / reset_classifier / ...)."""

    family = "bit"

    def __init__(self, cfg: BiTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.stem = BiTStem(cfg)
        in_chans = cfg.stem_width * cfg.width_factor
        stages = []
        for index, (units, mid, out) in enumerate(zip(cfg.layers, cfg.mid_channels, cfg.stage_channels)):
            stride = 1 if index == 0 else 2  # the stem already reduced by 4; each later stage halves again
            blocks = []
            for unit in range(units):
                blocks.append(PreActBottleneck(cfg, in_chans, mid, out, stride if unit == 0 else 1))
                in_chans = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.GroupNorm(cfg.gn_groups, cfg.num_features, eps=cfg.gn_eps)
        self.head: nn.Module = self._new_head(cfg.num_classes)

    # -- the model face -------------------------------------------------------------------------------------------
    def _check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ShapeError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
        if images.shape[1] != self.config.in_chans:
            raise ShapeError(
                f"expected {self.config.in_chans} input channels, got {images.shape[1]} (shape {tuple(images.shape)})"
            )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The final feature map after GroupNorm and ReLU: ``[B, 2048*wf, H/32, W/32]`` for four stages."""
        self._check_input(images)
        x = self.stem(images)
        for stage in self.stages:
            x = stage(x)
        return F.relu(self.norm(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, then the linear head; ``pre_logits=True`` returns the pooled representation."""
        pooled = features.mean(dim=(2, 3))  # [B, C]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_intermediates(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named representations: ``stem``, ``stage_{i}``, ``features``, ``pre_logits``, ``logits``."""
        self._check_input(images)
        out: dict[str, torch.Tensor] = {}
        x = out["stem"] = self.stem(images)
        for index, stage in enumerate(self.stages):
            x = out[f"stage_{index}"] = stage(x)
        out["features"] = F.relu(self.norm(x))
        out["pre_logits"] = self.forward_head(out["features"], pre_logits=True)
        out["logits"] = self.head(out["pre_logits"])
        return out

    def reset_classifier(self, num_classes: int) -> None:
        """New zero-initialised head (BiT's fine-tuning set-up)."""
        self.config.num_classes = num_classes
        self.head = self._new_head(num_classes)

    def set_input_size(self, img_size: int | Sequence[int], method: str = "official") -> None:
        """Nothing to resize in a conv net (global pooling takes any size); only the nominal size is recorded."""
        self.config.img_size = dataclasses.replace(self.config, img_size=img_size).img_size

    def no_weight_decay(self) -> set[str]:
        """Biases and GroupNorm parameters take no weight decay."""
        return {name for name, param in self.named_parameters() if param.ndim < 2}

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.config.num_features, num_classes)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head
