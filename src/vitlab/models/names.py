"""Every named model as data: the sizes of the paper's tables, the names that parse, and their config fields.

No torch here: `vitlab models` lists the variants (with :mod:`vitlab.models.counts`) without importing it.
:mod:`vitlab.models.registry` builds the models these names describe.

ViT sizes come from Table 1 of the paper (Base, Large, Huge) plus the Tiny and Small widths of DeiT that
small-image work uses; the patch size is part of the name (``vit_b16``, ``vit_s4``). BiT ResNet-v2 depths are
those of Kolesnikov et al. (2020); hybrids follow Section 3.1 and Appendix D.
"""
from __future__ import annotations

import difflib
import re
from typing import Any

from vitlab.errors import ConfigError

# Table 1: (layers, hidden size D, MLP size, heads). Ti and S are the DeiT widths used for small images.
VIT_SIZES: dict[str, dict[str, int]] = {
    "ti": dict(depth=12, width=192, mlp_dim=768, num_heads=3),
    "s": dict(depth=12, width=384, mlp_dim=1536, num_heads=6),
    "b": dict(depth=12, width=768, mlp_dim=3072, num_heads=12),
    "l": dict(depth=24, width=1024, mlp_dim=4096, num_heads=16),
    "h": dict(depth=32, width=1280, mlp_dim=5120, num_heads=16),
}
LISTED_PATCHES = (4, 8, 14, 16, 32)  # any patch size parses; these are the ones `list_models()` names

# BiT ResNet-v2: bottleneck units per stage for each depth.
BIT_DEPTHS: dict[int, tuple[int, ...]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BIT_WIDTHS = (1, 2, 3, 4)

# Hybrids (Section 3.1 / Appendix D): ResNet-50 units per stage before the ViT (patch size 1 on the feature map).
# Stride 16 removes stage 4 and extends stage 3 to 9 units; stride 32 keeps the four stages of ResNet-50.
HYBRID_STAGES: dict[int, tuple[int, ...]] = {16: (3, 4, 9), 32: (3, 4, 6, 3)}

DEFAULT_IMG_SIZE = 224
DEFAULT_NUM_CLASSES = 1000

_VIT = re.compile(r"^vit_(ti|s|b|l|h)(\d+)$")
_BIT = re.compile(r"^bit_r(\d+)x(\d+)$")
_HYBRID = re.compile(r"^r50_vit_(ti|s|b|l|h)(\d+)$")


def canonical_name(name: str) -> str:
    """Map the paper's spellings onto canonical names: ``ViT-B/16`` -> ``vit_b16``, ``BiT-R152x4`` -> ``bit_r152x4``,
    ``R50+ViT-L/32`` -> ``r50_vit_l32``, ``ResNet152x4`` -> ``bit_r152x4``."""
    key = name.strip().lower().replace(" ", "")
    key = re.sub(r"vit[-_]?(ti|s|b|l|h)[-_/]?(\d+)$", r"vit_\1\2", key)
    key = re.sub(r"^r50\+?[-_]?vit_", "r50_vit_", key)
    key = re.sub(r"^(bit[-_]?)?(r|resnet)(\d+)x(\d+)$", r"bit_r\3x\4", key)
    return key


def list_models() -> list[str]:
    """Canonical names of every listed variant (any patch size also parses, e.g. ``vit_s7``)."""
    names = [f"vit_{size}{patch}" for size in VIT_SIZES for patch in LISTED_PATCHES]
    names += [f"bit_r{depth}x{width}" for depth in BIT_DEPTHS for width in BIT_WIDTHS]
    names += [f"r50_vit_{size}{stride}" for size in ("b", "l") for stride in HYBRID_STAGES]
    return names


def model_spec(name: str) -> tuple[str, dict[str, Any]]:
    """``(family, config fields)`` for a model name; an unknown name lists close matches."""
    key = canonical_name(name)
    if match := _VIT.match(key):
        return "vit", dict(VIT_SIZES[match[1]], patch_size=int(match[2]))
    if (match := _HYBRID.match(key)) and int(match[2]) in HYBRID_STAGES:
        return "vit", dict(
            VIT_SIZES[match[1]], patch_size=1, hybrid_layers=HYBRID_STAGES[int(match[2])]
        )
    if (match := _BIT.match(key)) and int(match[1]) in BIT_DEPTHS:
        return "bit", dict(layers=BIT_DEPTHS[int(match[1])], width_factor=int(match[2]))
    close = difflib.get_close_matches(key, list_models(), n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `vitlab models`"
    raise ConfigError(f"unknown model {name!r}{hint}")
