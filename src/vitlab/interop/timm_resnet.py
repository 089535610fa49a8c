"""Conversion of timm's ResNet-v2 models: ``resnetv2_*_bit`` (BiT) and the ResNet inside ``vit_*_r50_*`` hybrids.

Our models are built with timm's numerics (BiT: ``ws_eps`` = timm's 1e-8; hybrids: ``ws_style="timm"`` and its
eps), so converted logits agree with timm's to float precision. :func:`vitlab.interop.timm.from_timm` dispatches
here; the hybrid helpers give the ResNet part of a hybrid ViT, the ViT part is converted there.

Name mapping (timm -> ours):
  BiT:     ``stem.conv`` -> ``stem.conv``; ``stages.{i}.blocks.{j}.{norm,conv}{1,2,3}`` -> ``stages.{i}.{j}.…``;
           ``….downsample.conv`` -> ``….shortcut``; ``norm`` -> ``norm``; 1x1-conv ``head.fc`` -> linear ``head``.
  hybrid:  ``patch_embed.backbone.stem.{conv,norm}`` -> ``patch_embed.stem.…`` (``patch_embed.backbone.{conv,norm}``
           for timm's stem-alone backbone, ``vit_tiny_r_s16_p8_*``);
           ``patch_embed.backbone.stages.{i}.blocks.{j}.…`` -> ``patch_embed.stages.{i}.{j}.…``;
           ``….downsample.{conv,norm}`` -> ``….shortcut.{conv,norm}``.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.models.hybrid import NUMERICS
from vitlab.models.resnet import BiTConfig, ResNetV2
from vitlab.models.weights import load_weights

_UNIT = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")


def _unit_key(rest: str) -> str:
    return rest.replace("downsample.", "shortcut.")


def _layers(stages: nn.Module) -> tuple[int, ...]:
    return tuple(len(stage.blocks) for stage in stages)


def _eps(module: nn.Module, what: str) -> float:
    eps = getattr(module, "eps", None)
    if eps is None:
        raise CheckpointError(f"timm model: {what} ({type(module).__name__}) has no eps; not a BiT-style ResNet-v2")
    return float(eps)


# -- BiT -----------------------------------------------------------------------------------------------------------
def is_timm_bit(model: nn.Module) -> bool:
    """A timm ResNetV2 with BiT's stem (7x7 conv, zero pad, max-pool) and pre-activation units."""
    stem = getattr(model, "stem", None)
    return (
        type(model).__name__ == "ResNetV2"
        and stem is not None
        and hasattr(stem, "conv")
        and hasattr(stem, "pad")
        and not hasattr(stem, "norm")
    )


def bit_config_from_timm(model: nn.Module) -> BiTConfig:
    """Our config for a timm ``resnetv2_*_bit`` model, with timm's weight-standardisation eps."""
    if not is_timm_bit(model):
        raise CheckpointError(
            f"{type(model).__name__} is not a timm BiT ResNet-v2 (expected resnetv2_*_bit: pre-activation units, "
            "7x7 stem conv with fixed padding)"
        )
    stem_width = model.stem.conv.out_channels
    width_factor, remainder = divmod(stem_width, 64)
    if remainder or width_factor < 1:
        raise CheckpointError(f"timm BiT stem has {stem_width} channels, not a multiple of 64")
    fc = getattr(model.head, "fc", None)
    num_classes = fc.out_channels if isinstance(fc, nn.Conv2d) else fc.out_features if isinstance(fc, nn.Linear) else 0
    return BiTConfig(
        layers=_layers(model.stages),
        width_factor=width_factor,
        in_chans=model.stem.conv.in_channels,
        num_classes=num_classes,
        gn_groups=model.norm.num_groups,
        gn_eps=_eps(model.norm, "the final GroupNorm"),
        ws_eps=_eps(model.stem.conv, "the stem conv"),
    )


def bit_state_from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our BiT state dict from a timm ``resnetv2_*_bit`` state dict (renames; the 1x1-conv head becomes linear)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if match := _UNIT.match(key):
            rest = match[3].replace("downsample.conv", "shortcut")  # BiT's shortcut is a bare conv
            out[f"stages.{match[1]}.{match[2]}.{rest}"] = value
        elif key == "head.fc.weight":
            out["head.weight"] = value.reshape(value.shape[0], -1)  # [K, C, 1, 1] -> [K, C]
        elif key == "head.fc.bias":
            out["head.bias"] = value
        elif key.startswith(("stem.conv.", "norm.")):
            out[key] = value
        else:
            raise CheckpointError(f"timm BiT state has key {key!r} with no counterpart in vitlab's ResNetV2")
    return out


def from_timm_resnetv2(model: nn.Module) -> ResNetV2:
    """Our :class:`ResNetV2` with the weights (and numerics) of a timm ``resnetv2_*_bit`` model."""
    ours = ResNetV2(bit_config_from_timm(model))
    load_weights(ours, bit_state_from_timm(model.state_dict()), source=f"timm {type(model).__name__}")
    return ours.train(model.training)


# -- hybrid --------------------------------------------------------------------------------------------------------
def is_timm_hybrid(model: nn.Module) -> bool:
    """A timm ViT whose patch embedding runs the official hybrid's ResNet (timm's ``vit_*_r50_*``, ``vit_*_r26_*``),
    or its root alone (``vit_tiny_r_s16_p8_*``: a ``Sequential`` of conv, norm and pool)."""
    backbone = getattr(getattr(model, "patch_embed", None), "backbone", None)
    if backbone is None:
        return False
    if type(backbone).__name__ == "ResNetV2":
        return hasattr(backbone, "stages")
    return isinstance(backbone, nn.Sequential) and all(hasattr(backbone, name) for name in ("conv", "norm", "pool"))


def _stem_and_layers(backbone: nn.Module) -> tuple[nn.Module, tuple[int, ...]]:
    """The stem (conv, norm[, pool]) of a timm hybrid backbone and its units per stage (``()``: the stem alone)."""
    if isinstance(backbone, nn.Sequential):
        return backbone, ()
    return backbone.stem, _layers(backbone.stages)


def hybrid_fields_from_timm(model: nn.Module) -> dict[str, Any]:
    """ViTConfig fields of a timm hybrid's ResNet: stages, stem width and timm's numerics."""
    if not is_timm_hybrid(model):
        raise CheckpointError(f"{type(model).__name__} has no timm ResNetV2 backbone in its patch embedding")
    stem, layers = _stem_and_layers(model.patch_embed.backbone)
    if not (hasattr(stem, "norm") and hasattr(stem, "conv")) or hasattr(stem, "pad"):
        raise CheckpointError("timm hybrid backbone: expected the official stem (conv, GroupNorm, SAME max-pool)")
    gn_eps = _eps(stem.norm, "the stem GroupNorm")
    if gn_eps != NUMERICS["timm"].gn_eps:
        raise CheckpointError(f"timm hybrid backbone: GroupNorm eps {gn_eps} differs from {NUMERICS['timm'].gn_eps}")
    return dict(
        hybrid_layers=layers,
        hybrid_width=stem.conv.out_channels,
        in_chans=stem.conv.in_channels,
        ws_style="timm",
        ws_eps=_eps(stem.conv, "the stem conv"),
    )


def _hybrid_key(key: str) -> str:
    """Our name of a timm hybrid parameter; keys outside the backbone pass unchanged."""
    prefix = "patch_embed.backbone."
    if not key.startswith(prefix):
        return key
    rest = key[len(prefix):]
    if match := _UNIT.match(rest):
        return f"patch_embed.stages.{match[1]}.{match[2]}.{_unit_key(match[3])}"
    if rest.startswith("stem."):
        return f"patch_embed.{rest}"
    if rest.startswith(("conv.", "norm.")):  # a stem-alone backbone: the stem's modules sit at its top
        return f"patch_embed.stem.{rest}"
    raise CheckpointError(f"timm hybrid backbone has key {key!r} with no counterpart in vitlab's HybridEmbed")


def hybrid_state_from_timm(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a timm hybrid ViT's, ViT keys already in our names) with the backbone keys renamed to ours.

    The token projection ``patch_embed.proj`` has the same name on both sides.
    """
    if not is_timm_hybrid(model):
        raise CheckpointError(f"{type(model).__name__} has no timm ResNetV2 backbone in its patch embedding")
    return {_hybrid_key(key): value for key, value in state.items()}
