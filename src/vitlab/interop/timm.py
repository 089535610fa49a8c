"""timm models -> vitlab models with the same weights and the same numerics.

timm's ViT keeps the parameter names we chose (patch_embed.proj, blocks.i.attn.qkv, ...) except the position
table, so the plain ViT conversion is a rename plus a config read off the module. timm computes GELU exactly and
may use other LayerNorm eps values, so the converted model is built with timm's numerics (``gelu="exact"``,
timm's eps) and its logits match timm's. BiT ResNet-v2 and the R50 hybrids go through
``vitlab.interop.timm_resnet``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from vitlab.errors import CheckpointError
from vitlab.interop.timm_resnet import from_timm_resnetv2, hybrid_fields_from_timm, hybrid_state_from_timm
from vitlab.models.registry import build_from_config
from vitlab.models.weights import load_weights


def from_timm(timm_model: nn.Module) -> nn.Module:
    """Our model with ``timm_model``'s architecture and weights (random or pretrained, no download here)."""
    kind = type(timm_model).__name__
    if kind == "ResNetV2":
        return from_timm_resnetv2(timm_model)
    if kind != "VisionTransformer":
        raise CheckpointError(f"from_timm supports timm VisionTransformer and ResNetV2 models, got {kind}")
    fields = vit_config_from_timm(timm_model)
    model = build_from_config("vit", fields)
    state = {("pos_embed.weight" if key == "pos_embed" else key): value for key, value in timm_model.state_dict().items()}
    if fields.get("hybrid_layers") is not None:
        state = hybrid_state_from_timm(timm_model, state)
    load_weights(model, state, source=f"timm {kind}")
    return model


def vit_config_from_timm(m: nn.Module) -> dict[str, Any]:
    """ViT config fields read off a timm VisionTransformer; refuses variants we do not implement."""
    _refuse_unsupported(m)
    block = m.blocks[0]
    act = block.mlp.act
    approximate = getattr(act, "approximate", "none")
    fields: dict[str, Any] = dict(
        img_size=tuple(m.patch_embed.img_size),
        patch_size=int(m.patch_embed.patch_size[0]),
        in_chans=int(m.patch_embed.proj.in_channels),
        num_classes=int(m.num_classes),
        width=int(m.embed_dim),
        depth=len(m.blocks),
        mlp_dim=int(block.mlp.fc1.out_features),
        num_heads=int(block.attn.num_heads),
        classifier="token" if m.global_pool == "token" else "gap",
        posemb="learned" if m.pos_embed is not None else "none",
        gelu="tanh" if approximate == "tanh" else "exact",
        ln_eps=float(m.norm.eps),
        qkv_bias=block.attn.qkv.bias is not None,
    )
    if hasattr(m.patch_embed, "backbone"):
        fields.update(hybrid_fields_from_timm(m))
    return fields


def _refuse_unsupported(m: nn.Module) -> None:
    """timm options outside the paper's architecture would silently change outputs: name them instead."""
    problems = []
    if m.global_pool not in ("token", "avg"):
        problems.append(f"global_pool={m.global_pool!r}")
    if m.global_pool == "avg" and not isinstance(getattr(m, "fc_norm", nn.Identity()), nn.Identity):
        problems.append("fc_norm (LayerNorm after pooling; the paper normalises before pooling)")
    if m.global_pool == "avg" and m.cls_token is not None:
        problems.append("class token with average pooling")
    if getattr(m, "reg_token", None) is not None:
        problems.append("register tokens")
    if getattr(m, "no_embed_class", False):
        problems.append("no_embed_class")
    if not isinstance(getattr(m, "norm_pre", nn.Identity()), nn.Identity):
        problems.append("norm_pre")
    block = m.blocks[0]
    if not isinstance(getattr(block, "ls1", nn.Identity()), nn.Identity):
        problems.append("layer scale")
    if not isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity):
        problems.append("qk norm")
    if not isinstance(getattr(m, "attn_pool", None), (type(None), nn.Identity)):
        problems.append("attention pooling head")
    if problems:
        raise CheckpointError(f"timm model uses options vitlab does not implement: {', '.join(problems)}")
