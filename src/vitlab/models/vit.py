"""The Vision Transformer of Dosovitskiy et al. (2020), Section 3.1 and Appendix B.

An image is cut into P x P patches, each linearly embedded (a conv with kernel = stride = P); a learnable class
token is prepended (or, with ``classifier="gap"``, the tokens are averaged at the end); position embeddings are
added; pre-LN Transformer blocks follow, then a final LayerNorm, an optional tanh pre-logits layer and the head.

Defaults follow the official Flax code: LayerNorm eps 1e-6, GELU in its tanh approximation, the official
initialisers. ``gelu="exact"`` and ``ln_eps`` reproduce timm / Hugging Face numerics.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.errors import ConfigError, ShapeError
from vitlab.models import kernels
from vitlab.models.hybrid import HybridEmbed  # the ResNet stem of the hybrid models
from vitlab.models.layers import check_image_shape, hybrid_stride, lecun_normal_
from vitlab.models.posemb import POSEMB_KINDS, build_pos_embed, build_relative_logits

CLASSIFIERS = ("token", "gap")
GELU_KINDS = ("tanh", "exact")


@dataclass
class ViTConfig:
    """Everything that defines a ViT. Sizes of the paper's Table 1 live in the registry, not here."""

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    width: int = 768  # D, the token width
    depth: int = 12  # number of blocks
    mlp_dim: int = 3072
    num_heads: int = 12
    classifier: str = "token"  # "token": class token; "gap": global average pooling of the patch tokens
    posemb: str = "learned"
    representation_size: Optional[int] = None  # tanh pre-logits layer of pre-training; None = none
    dropout: float = 0.0  # after every dense except qkv, and after adding position embeddings
    attn_dropout: float = 0.0  # on attention probabilities (0 in the paper)
    drop_path: float = 0.0  # stochastic depth, linearly increasing over blocks up to this rate
    gelu: str = "tanh"  # "tanh" (official Flax) | "exact" (timm, Hugging Face)
    ln_eps: float = 1e-6
    qkv_bias: bool = True
    # Masked patch prediction (Section 4.6 / Appendix B.1.2): a learnable [mask] embedding and a per-patch head over
    # this many classes (512 = 3-bit mean colour of an RGB patch). 0 = none; removed for fine-tuning.
    mpp_classes: int = 0
    # Hybrid (Section 3.1, "Hybrid Architecture"): a ResNet stem whose feature map is cut into patch_size patches.
    # ResNet units per stage; None = plain patch embedding; () = the ResNet's root alone (conv, GroupNorm, max-pool:
    # stride 4), as the official code allows (``resnet.num_layers=()``, its R+Ti/16).
    hybrid_layers: Optional[tuple[int, ...]] = None
    hybrid_width: int = 64
    ws_eps: float = 1e-5
    ws_style: str = "official"

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(s) for s in self.img_size)  # type: ignore[assignment]
        if self.hybrid_layers is not None:
            self.hybrid_layers = tuple(int(n) for n in self.hybrid_layers)
            if any(n < 1 for n in self.hybrid_layers):
                raise ConfigError(
                    f"hybrid_layers must list positive unit counts per stage ([] for the stem alone), "
                    f"got {list(self.hybrid_layers)}"
                )
        _check_choice("classifier", self.classifier, CLASSIFIERS)
        _check_choice("posemb", self.posemb, POSEMB_KINDS)
        _check_choice("gelu", self.gelu, GELU_KINDS)
        for name in ("patch_size", "in_chans", "width", "depth", "mlp_dim", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.mpp_classes < 0:
            raise ConfigError(f"mpp_classes must be >= 0 (0 = no masked-patch head), got {self.mpp_classes}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        if self.width % self.num_heads:
            raise ConfigError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        stride = self.patch_size * self.total_stem_stride
        for side in self.img_size:
            if side % stride:
                raise ShapeError(
                    f"image size {self.img_size[0]}x{self.img_size[1]} is not divisible by the patch size {stride}"
                    + (" (ResNet stride x patch)" if self.is_hybrid else "")
                )

    @property
    def is_hybrid(self) -> bool:
        """Whether tokens are cut from a ResNet feature map (``hybrid_layers`` given, even empty) or from pixels."""
        return self.hybrid_layers is not None

    @property
    def total_stem_stride(self) -> int:
        """Stride of the hybrid ResNet (1 for a plain ViT): see :func:`hybrid_stride`."""
        return hybrid_stride(self.hybrid_layers)

    @property
    def grid_size(self) -> tuple[int, int]:
        stride = self.patch_size * self.total_stem_stride
        return (self.img_size[0] // stride, self.img_size[1] // stride)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is unknown; expected one of {', '.join(choices)}")


class PatchEmbed(nn.Module):
    """Cut the image into P x P patches and embed each linearly: ``[B, C, H, W] -> [B, N, D]``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.in_chans, self.img_size, self.patch_size = cfg.in_chans, cfg.img_size, cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        lecun_normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def grid_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return (img_size[0] // self.patch_size, img_size[1] // self.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_image_shape(images, self.in_chans, self.img_size)
        weight = self.proj.weight  # [D, C, P, P]
        if kernels.uses_reference_bf16(images, weight):
            # Without native bf16 the conv falls back to a slow im2col path; kernel = stride = P makes it exactly
            # a matrix product over flattened patches, which takes the fast bf16 layout instead.
            return kernels.linear(patchify(images, self.patch_size), weight.flatten(1), self.proj.bias)
        return self.proj(images).flatten(2).transpose(1, 2)  # [B, N, D]


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, C*P*P]``, each row one patch flattened in the conv weight's (C, P, P) order."""
    batch, chans, height, width = images.shape
    grid = images.reshape(batch, chans, height // patch, patch, width // patch, patch)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // patch) * (width // patch), chans * patch * patch)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection; the product goes through :func:`kernels.attention`.

    ``num_queries=n`` computes the outputs of the first ``n`` tokens only (all tokens still serve as keys and
    values): what the last block needs when only the class token is read out. With ``posemb="relative"`` /
    ``"relative_2d"`` the layer owns a relative position table (``rel_pos``) whose logits are added to the content
    logits before the softmax (Appendix D.4).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.width // cfg.num_heads
        self.attn_dropout = cfg.attn_dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.rel_pos = build_relative_logits(
            cfg.posemb, cfg.grid_size, cfg.width, cfg.num_heads, 1 if cfg.classifier == "token" else 0
        )
        # The official code has separate q, k, v Dense layers, each Xavier-uniform over D x D.
        for chunk in self.qkv.weight.data.chunk(3, dim=0):
            nn.init.xavier_uniform_(chunk)
        nn.init.xavier_uniform_(self.proj.weight)
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def _heads(
        self, tokens: torch.Tensor, num_queries: Optional[int] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, width = tokens.shape
        weight, bias = self.qkv.weight, self.qkv.bias  # [3D, D], [3D]: q, k, v stacked
        if num_queries is None:
            qkv = kernels.linear(tokens, weight, bias).reshape(batch, length, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
            return q, k, v
        q = kernels.linear(tokens[:, :num_queries], weight[:width], None if bias is None else bias[:width])
        kv = kernels.linear(tokens, weight[width:], None if bias is None else bias[width:])
        k, v = kv.reshape(batch, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q.reshape(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2), k, v

    def forward(self, tokens: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        q, k, v = self._heads(tokens, num_queries)
        dropout = self.attn_dropout if self.training else 0.0
        bias = None if self.rel_pos is None else self.rel_pos(q)  # [B, heads, Nq, N] relative logits
        mixed = kernels.attention(q, k, v, dropout_p=dropout, bias=bias)  # [B, heads, Nq, head_dim]
        return kernels.linear(mixed.transpose(1, 2).flatten(2), self.proj.weight, self.proj.bias)

    def attention_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The softmax attention matrix ``[B, heads, N, N]`` (what SDPA computes but does not return)."""
        q, k, _ = self._heads(tokens)
        return kernels.attention_probs(q, k, None if self.rel_pos is None else self.rel_pos(q))


class Mlp(nn.Module):
    """Dense(mlp_dim) -> GELU -> Dropout -> Dense(D) -> Dropout (Appendix B / official MlpBlock)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)
        self.approximate = "tanh" if cfg.gelu == "tanh" else "none"
        self.drop = nn.Dropout(cfg.dropout)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(kernels.linear(tokens, self.fc1.weight, self.fc1.bias), approximate=self.approximate)
        return self.drop(kernels.linear(self.drop(hidden), self.fc2.weight, self.fc2.bias))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, rescaling the survivors."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return branch
        keep = 1.0 - self.rate
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep)
        return branch * mask / keep


class Block(nn.Module):
    """Pre-LN Transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (Eq. 2-3)."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.attn_drop_out = nn.Dropout(cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        """``num_queries=n``: only the first ``n`` tokens come out (``[B, n, D]``); the rest still attend-in."""
        residual = tokens if num_queries is None else tokens[:, :num_queries]
        tokens = residual + self.drop_path(self.attn_drop_out(self.attn(self.norm1(tokens), num_queries)))
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))


class PreLogits(nn.Module):
    """Dense + tanh "representation" layer used during pre-training (removed for fine-tuning)."""

    def __init__(self, width: int, size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, size)
        lecun_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(pooled))


class VisionTransformer(nn.Module):
    """ViT with the uniform model face (forward_features / forward_head / reset_classifier / ...)."""

    family = "vit"
    # forward() takes ``last_block_cls_only`` (what the classification objective asks of models that offer it)
    offers_last_block_cls_only = True

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        if cfg.is_hybrid:
            self.patch_embed: nn.Module = HybridEmbed(cfg)
        else:
            self.patch_embed = PatchEmbed(cfg)
        self.num_prefix_tokens = 1 if cfg.classifier == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if self.num_prefix_tokens else None
        self.pos_embed = build_pos_embed(cfg.posemb, cfg.grid_size, cfg.width, self.num_prefix_tokens)
        self.pos_drop = nn.Dropout(cfg.dropout)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear in depth
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.pre_logits: nn.Module = (
            PreLogits(cfg.width, cfg.representation_size) if cfg.representation_size else nn.Identity()
        )
        self.head: nn.Module = self._new_head(cfg.num_classes)
        self.recompute_every = 0  # activation checkpointing: 0 off, k: every k-th block
        if cfg.mpp_classes:
            self.mask_token = nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02)
            self.mpp_head = nn.Linear(cfg.width, cfg.mpp_classes)
            nn.init.zeros_(self.mpp_head.weight)
            nn.init.zeros_(self.mpp_head.bias)

    # -- the model face -------------------------------------------------------------------------------------------
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._add_prefix_and_position(self.patch_embed(images))

    def _add_prefix_and_position(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``[B, N, D]`` -> the encoder's input ``[B, prefix + N, D]``."""
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # [B, 1+N, D]
        return self.pos_drop(self.pos_embed(tokens))

    def forward_features(self, images: torch.Tensor, *, last_block_cls_only: bool = False) -> torch.Tensor:
        """Encoded tokens after the final LayerNorm: ``[B, prefix + N, D]``.

        ``last_block_cls_only=True`` (class-token models; no effect for "gap") computes the last block for the
        prefix tokens only and returns ``[B, prefix, D]``: the head reads nothing else, so the logits and every
        gradient are those of the full model (up to float summation order) for fewer FLOPs. The classification
        objective asks for it (``model(x, last_block_cls_only=True)``); everything else, forward hooks on the last
        block included, sees every token.
        """
        return self.norm(self._encode(self._embed(images), last_block_cls_only))

    def encode_patch_embeddings(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Encode given patch embeddings ``[B, N, D]`` (e.g. corrupted ones for masked patch prediction)."""
        return self.norm(self._encode(self._add_prefix_and_position(patch_tokens)))

    def _encode(self, tokens: torch.Tensor, last_block_cls_only: bool = False) -> torch.Tensor:
        """The Transformer blocks, the one place that loops over them for training (activation checkpointing
        applies here: see :meth:`set_activation_checkpointing`)."""
        last = len(self.blocks) - 1
        prefix = self.num_prefix_tokens if last_block_cls_only and self.num_prefix_tokens else None
        recompute = self.recompute_every and self.training and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks):
            num_queries = prefix if index == last else None
            if recompute and index % self.recompute_every == 0:
                # Keep only the block's input; its inner activations are recomputed in the backward pass (with
                # the same RNG state, so dropout and stochastic depth draw the same masks).
                tokens = checkpoint(block, tokens, num_queries, use_reentrant=False)
            else:
                tokens = block(tokens, num_queries)
        return tokens

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if self.config.classifier == "token" else tokens.mean(dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        representation = self.pre_logits(self.pool(features))
        return representation if pre_logits else self.head(representation)

    def forward(
        self, images: torch.Tensor, corrupt: Optional[Callable] = None, *, last_block_cls_only: bool = False
    ) -> Any:
        """Logits ``[B, num_classes]`` = ``forward_head(forward_features(images))``; with ``corrupt`` (masked patch
        prediction), see :meth:`forward_mpp`. ``last_block_cls_only``: see :meth:`forward_features`.

        Both options are keywords of ``forward`` so that they run through DDP / FSDP wrappers, whose gradient
        synchronisation and parameter gathering hook the wrapped module's forward.
        """
        if corrupt is not None:
            return self.forward_mpp(images, corrupt)
        if last_block_cls_only:
            return self.forward_head(self.forward_features(images, last_block_cls_only=True))
        return self.forward_head(self.forward_features(images))

    def forward_mpp(self, images: torch.Tensor, corrupt: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked patch prediction (Section 4.6): ``corrupt(patch_tokens, mask_token)`` returns the corrupted
        tokens ``[B, N, D]`` and the corrupted positions ``[B, N]`` (bool); the result is the colour-class logits
        of every position ``[B, N, mpp_classes]`` and the corrupted map. Every position, not only the corrupted
        ones: selecting them (``encoded[corrupted]``) has a data-dependent shape, which a GPU can only learn by
        stopping its queue to read the count back; the objective weights the loss by the map instead."""
        if not self.config.mpp_classes:
            raise ConfigError("masked patch prediction needs a ViT built with mpp_classes > 0 (512 for RGB)")
        tokens, corrupted = corrupt(self.patch_embed(images), self.mask_token)
        encoded = self.encode_patch_embeddings(tokens)[:, self.num_prefix_tokens :]  # [B, N, D]
        return self.mpp_head(encoded), corrupted

    def set_activation_checkpointing(self, every: bool | int) -> None:
        """Recompute the blocks' activations in the backward pass instead of keeping them (training only).

        ``True`` or ``1``: every block; ``k``: every k-th block (blocks 0, k, 2k, ...); ``False`` / ``0``: off. A
        checkpointed block keeps only its input ``[B, 1+N, D]`` instead of about a dozen tensors of that size and
        the ``[B, heads, N, N]`` attention, at the price of a second forward pass of that block. Through
        ``torch.utils.checkpoint`` (non-reentrant), which composes with DDP, FSDP2 and autocast.
        """
        if isinstance(every, bool):
            every = int(every)
        if not isinstance(every, int) or every < 0:
            raise ConfigError(f"activation checkpointing takes true, false or an integer k >= 1, got {every!r}")
        self.recompute_every = every

    def forward_intermediates(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named representations (big_vision style): ``block_{i}``, ``encoded``, ``pooled``, ``pre_logits``, ``logits``."""
        out: dict[str, torch.Tensor] = {}
        tokens = self._embed(images)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            out[f"block_{index}"] = tokens
        out["encoded"] = self.norm(tokens)
        out["pooled"] = self.pool(out["encoded"])
        out["pre_logits"] = self.pre_logits(out["pooled"])
        out["logits"] = self.head(out["pre_logits"])
        return out

    @torch.no_grad()
    def get_attention_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, each ``[B, heads, N, N]`` (N counts the class token)."""
        maps = []
        tokens = self._embed(images)
        for block in self.blocks:
            maps.append(block.attn.attention_probs(block.norm1(tokens)))
            tokens = block(tokens)
        return maps

    def reset_classifier(self, num_classes: int) -> None:
        """Fine-tuning head (Section 3.2): drop the pre-logits layer, add a zero-initialised D x K layer."""
        self.config.num_classes = num_classes
        self.config.representation_size = None
        self.pre_logits = nn.Identity()
        self.head = self._new_head(num_classes)

    def set_input_size(self, img_size: int | tuple[int, int], method: str = "official") -> None:
        """Move to another resolution keeping the patch size: the position grid is interpolated in 2-D."""
        new_cfg = dataclasses.replace(self.config, img_size=img_size)  # validates divisibility
        self.config.img_size = new_cfg.img_size
        self.patch_embed.img_size = new_cfg.img_size
        self.pos_embed.resize(new_cfg.grid_size, method)
        for block in self.blocks:
            if block.attn.rel_pos is not None:
                block.attn.rel_pos.resize(new_cfg.grid_size, method)

    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay: biases, norms, position embeddings, the class token."""
        return {
            name
            for name, param in self.named_parameters()
            if param.ndim < 2 or name.startswith("pos_embed.") or ".rel_pos." in name
            or name in ("cls_token", "mask_token")
        }

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Make a stored state fit this model's grid: position embeddings of another resolution are resized."""
        adapted = dict(state)
        if "pos_embed.weight" in adapted and hasattr(self.pos_embed, "adapt_state") and self.config.posemb == "learned":
            adapted["pos_embed.weight"] = self.pos_embed.adapt_state(adapted["pos_embed.weight"])
        if self.config.posemb == "learned_2d":
            for part in ("row", "col"):
                key = f"pos_embed.{part}"
                if key in adapted:
                    adapted[key] = self.pos_embed.adapt_state(part, adapted[key])
        for index, block in enumerate(self.blocks):
            key, rel_pos = f"blocks.{index}.attn.rel_pos.table", block.attn.rel_pos
            if rel_pos is not None and key in adapted and adapted[key].shape != rel_pos.table.shape:
                offsets = adapted[key].shape[0] - (3 if self.num_prefix_tokens else 0)
                side = (math.isqrt(offsets) + 1) // 2  # a square (2g-1) x (2g-1) offset grid
                adapted[key] = rel_pos.adapt_table(adapted[key], rel_pos.grid, old_grid=(side, side))
        return adapted

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.config.representation_size or self.config.width, num_classes)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head
