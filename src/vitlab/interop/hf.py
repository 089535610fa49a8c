"""Hugging Face ``ViTModel`` / ``ViTForImageClassification`` -> vitlab models with the same weights.

Hugging Face renamed ViT's parameters between transformers 4 (``vit.encoder.layer.N.attention.attention.query``)
and 5 (``vit.layers.N.attention.q_proj``); the rename table below accepts both. The converted model takes its
numerics from the Hugging Face config (``hidden_act``, ``layer_norm_eps``: 1e-12 by default there, 1e-6 in the
official code), and the ``ViTModel`` pooler (dense + tanh on the class token) becomes our pre-logits layer.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.models.registry import build_from_config
from vitlab.models.weights import load_weights

# (pattern on the Hugging Face key without the "vit." prefix, our key); q/k/v are fused afterwards.
_RENAMES: list[tuple[str, str]] = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed.weight"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.query|q_proj)\.(weight|bias)", r"blocks.\1.attn.q.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.key|k_proj)\.(weight|bias)", r"blocks.\1.attn.k.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.value|v_proj)\.(weight|bias)", r"blocks.\1.attn.v.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"pooler\.dense\.(weight|bias)", r"pre_logits.fc.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
]
_TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_tanh"}


def from_hf(hf_model: nn.Module) -> nn.Module:
    """Our ViT with the weights of a Hugging Face ViT (any transformers version with ViT)."""
    fields = vit_config_from_hf(hf_model)
    model = build_from_config("vit", fields)
    load_weights(model, hf_state_to_ours(hf_model.state_dict()), source=f"Hugging Face {type(hf_model).__name__}")
    return model


def vit_config_from_hf(hf_model: nn.Module) -> dict[str, Any]:
    config = hf_model.config
    if getattr(config, "model_type", "vit") != "vit":
        raise CheckpointError(f"from_hf converts ViT models, got model_type={config.model_type!r}")
    act = config.hidden_act
    if act not in {"gelu"} | _TANH_GELUS:
        raise CheckpointError(f"Hugging Face hidden_act={act!r} is not a GELU; vitlab's ViT uses GELU")
    state_keys = hf_model.state_dict().keys()
    has_pooler = any(key.startswith(("pooler.", "vit.pooler.")) for key in state_keys)
    has_head = any(key.startswith("classifier.") for key in state_keys)
    image_size = config.image_size if isinstance(config.image_size, (tuple, list)) else (config.image_size,) * 2
    return dict(
        img_size=tuple(image_size),
        patch_size=int(config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]),
        in_chans=int(config.num_channels),
        num_classes=int(config.num_labels) if has_head else 0,
        width=int(config.hidden_size),
        depth=int(config.num_hidden_layers),
        mlp_dim=int(config.intermediate_size),
        num_heads=int(config.num_attention_heads),
        classifier="token",
        representation_size=int(config.hidden_size) if has_pooler else None,
        gelu="tanh" if act in _TANH_GELUS else "exact",
        ln_eps=float(config.layer_norm_eps),
        qkv_bias=bool(getattr(config, "qkv_bias", True)),
    )


def hf_state_to_ours(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Hugging Face keys to ours and fuse the separate q, k, v projections into ``qkv``."""
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in hf_state.items():
        short = key[4:] if key.startswith("vit.") else key
        for pattern, target in _RENAMES:
            if re.fullmatch(pattern, short):
                state[re.sub(pattern, target, short)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Hugging Face keys vitlab does not know: {', '.join(unknown[:6])}")
    for key in [k for k in state if ".attn.q." in k]:
        prefix, kind = key.split(".attn.q.")
        parts = [state.pop(f"{prefix}.attn.{name}.{kind}") for name in ("q", "k", "v")]
        state[f"{prefix}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return state
