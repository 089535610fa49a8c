"""Official ``.npz`` key tables of the two ResNets: BiT (google-research/big_transfer) and the hybrids' stem
(google-research/vision_transformer). :mod:`vitlab.interop.official` reads these rows for loading and export.

BiT checkpoints nest everything under ``resnet/`` with TF-slim names: ``block{i}/unit{jj}/{a,b,c}/`` hold the
pre-activation GroupNorm (``group_norm/{gamma,beta}``) and the conv (``standardized_conv2d/kernel``) of the unit's
first, second and third conv; ``a/proj/`` is the projection shortcut; the head is a 1x1 conv on the pooled features.
The hybrids' ResNet sits at the top level of the ViT checkpoint in Flax names: ``conv_root``, ``gn_root``,
``block{i}/unit{j}/{conv,gn}{1,2,3}`` and ``{conv,gn}_proj``. Unit numbers start at 1 (two digits in BiT).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.interop.keymap import KeyMap

BIT_PREFIX = "resnet/"
BIT_STEM_WIDTH = 64  # stem channels of BiT at width factor 1


def _gn(official_scope: str, ours: str, scale: str, bias: str) -> list[KeyMap]:
    return [
        KeyMap(f"{official_scope}/{scale}", f"{ours}.weight", "norm"),  # [C] or [1, 1, 1, C]
        KeyMap(f"{official_scope}/{bias}", f"{ours}.bias", "norm"),
    ]


def bit_rows(model: nn.Module) -> list[KeyMap]:
    """Every official key of a :class:`vitlab.models.resnet.ResNetV2` with our key and layout."""
    conv = "standardized_conv2d/kernel"
    rows = [KeyMap(f"{BIT_PREFIX}root_block/{conv}", "stem.conv.weight", "conv")]
    for i, stage in enumerate(model.stages):
        for j, unit in enumerate(stage):
            scope, ours = f"{BIT_PREFIX}block{i + 1}/unit{j + 1:02d}", f"stages.{i}.{j}"
            for letter, index in (("a", 1), ("b", 2), ("c", 3)):
                rows += _gn(f"{scope}/{letter}/group_norm", f"{ours}.norm{index}", "gamma", "beta")
                rows.append(KeyMap(f"{scope}/{letter}/{conv}", f"{ours}.conv{index}.weight", "conv"))
            if unit.shortcut is not None:
                rows.append(KeyMap(f"{scope}/a/proj/{conv}", f"{ours}.shortcut.weight", "conv"))
    rows += _gn(f"{BIT_PREFIX}group_norm", "norm", "gamma", "beta")
    if model.config.num_classes:
        rows += [
            KeyMap(f"{BIT_PREFIX}head/conv2d/kernel", "head.weight", "conv_dense"),
            KeyMap(f"{BIT_PREFIX}head/conv2d/bias", "head.bias", "same"),
        ]
    return rows


def hybrid_rows(model: nn.Module) -> list[KeyMap]:
    """Official keys of a hybrid ViT's ResNet (``patch_embed`` minus the token projection, which the ViT table has)."""
    embed = model.patch_embed
    rows = [KeyMap("conv_root/kernel", "patch_embed.stem.conv.weight", "conv")]
    rows += _gn("gn_root", "patch_embed.stem.norm", "scale", "bias")
    for i, stage in enumerate(embed.stages):
        for j, unit in enumerate(stage):
            scope, ours = f"block{i + 1}/unit{j + 1}", f"patch_embed.stages.{i}.{j}"
            for index in (1, 2, 3):
                rows.append(KeyMap(f"{scope}/conv{index}/kernel", f"{ours}.conv{index}.weight", "conv"))
                rows += _gn(f"{scope}/gn{index}", f"{ours}.norm{index}", "scale", "bias")
            if unit.shortcut is not None:
                rows.append(KeyMap(f"{scope}/conv_proj/kernel", f"{ours}.shortcut.conv.weight", "conv"))
                rows += _gn(f"{scope}/gn_proj", f"{ours}.shortcut.norm", "scale", "bias")
    return rows


def _units_per_block(arrays: dict[str, np.ndarray], pattern: str) -> tuple[int, ...]:
    units: dict[int, set[int]] = {}
    for key in arrays:
        if match := re.match(pattern, key):
            units.setdefault(int(match[1]), set()).add(int(match[2]))
    if not units or sorted(units) != list(range(1, len(units) + 1)):
        raise CheckpointError(f"cannot read the ResNet stages off the checkpoint's keys (found blocks {sorted(units)})")
    return tuple(len(units[block]) for block in sorted(units))


def hybrid_layers_from_npz(arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Units per stage of a hybrid checkpoint, e.g. ``(3, 4, 9)`` for R50+ViT-B/16; ``()`` when it has the ResNet's
    root alone (the official R+Ti/16)."""
    if not any(key.startswith("block") for key in arrays):
        return ()
    return _units_per_block(arrays, r"^block(\d+)/unit(\d+)/")


def hybrid_fields_from_npz(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """ViT config fields describing a hybrid checkpoint's ResNet (stages and stem width)."""
    return dict(
        hybrid_layers=hybrid_layers_from_npz(arrays),
        hybrid_width=int(arrays["conv_root/kernel"].shape[-1]),
        in_chans=int(arrays["conv_root/kernel"].shape[2]),
    )


def bit_config_from_npz(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """BiT config fields read off an official checkpoint: stages, width factor, input channels, classes."""
    root = arrays.get(f"{BIT_PREFIX}root_block/standardized_conv2d/kernel")
    if root is None:
        raise CheckpointError(f"not an official BiT checkpoint: no '{BIT_PREFIX}root_block/standardized_conv2d/kernel'")
    width = int(root.shape[-1])
    if width % BIT_STEM_WIDTH:
        raise CheckpointError(f"BiT stem has {width} channels, not a multiple of {BIT_STEM_WIDTH}")
    bias = arrays.get(f"{BIT_PREFIX}head/conv2d/bias")
    return dict(
        layers=_units_per_block(arrays, rf"^{BIT_PREFIX}block(\d+)/unit(\d+)/"),
        width_factor=width // BIT_STEM_WIDTH,
        in_chans=int(root.shape[2]),
        num_classes=0 if bias is None else int(bias.shape[-1]),
    )
