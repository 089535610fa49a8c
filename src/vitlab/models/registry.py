"""Every named model, built: ``create_model(name)`` and ``build_from_config(family, fields)``.

The names and their numbers live in :mod:`vitlab.models.names` (re-exported here).

ViT sizes come from Table 1 of the paper (Base, Large, Huge) plus the Tiny and Small widths of DeiT that
small-image work uses; the patch size is part of the name (``vit_b16``, ``vit_s4``). BiT ResNet-v2 depths are
those of Kolesnikov et al. (2020); hybrids follow Section 3.1 and Appendix D.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.names import (  # noqa: F401  (the names and their numbers live in the torch-free names.py)
    BIT_DEPTHS,
    BIT_WIDTHS,
    DEFAULT_IMG_SIZE,
    DEFAULT_NUM_CLASSES,
    HYBRID_STAGES,
    LISTED_PATCHES,
    VIT_SIZES,
    canonical_name,
    list_models,
    model_spec,
)
from vitlab.models.resnet import BiTConfig, ResNetV2
from vitlab.models.vit import ViTConfig, VisionTransformer


def _family(family: str) -> tuple[type, Callable[[Any], nn.Module]]:
    """The config class and constructor of a family."""
    if family == "vit":
        return ViTConfig, VisionTransformer
    if family == "bit":
        return BiTConfig, ResNetV2
    raise ConfigError(f"unknown model family {family!r}; expected 'vit' or 'bit'")


def build_from_config(family: str, fields: dict[str, Any]) -> nn.Module:
    """Build a model from its family and config fields (how checkpoints are rebuilt without pickle)."""
    config_cls, model_cls = _family(family)
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ConfigError(
            f"unknown {family} model option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(valid))}"
        )
    return model_cls(config_cls(**fields))


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int = 3,
    **overrides: Any,
) -> nn.Module:
    """Build a named model, e.g. ``create_model("vit_b16", num_classes=10, img_size=384)``.

    ``overrides`` set any field of the family's config (``classifier="gap"``, ``posemb="sincos_2d"``,
    ``representation_size=768``, ``depth=6`` ...).
    """
    family, fields = model_spec(name)
    fields.update(
        num_classes=DEFAULT_NUM_CLASSES if num_classes is None else num_classes,
        img_size=DEFAULT_IMG_SIZE if img_size is None else img_size,
        in_chans=in_chans,
    )
    fields.update(overrides)
    return build_from_config(family, fields)
