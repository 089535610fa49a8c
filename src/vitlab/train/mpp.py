"""Masked patch prediction, the paper's self-supervised objective (Section 4.6, Appendix B.1.2).

Half of the patch embeddings are corrupted — of those, 80% replaced by a learnable [mask] embedding, 10% by the
embedding of a random other patch, 10% left unchanged — and the model predicts, for every corrupted patch, its mean
colour quantised to 3 bits per channel (512 classes for RGB) from the encoded token at that position.

The model carries the two extra parts (``ViTConfig.mpp_classes``: ``mask_token`` and ``mpp_head``), so the optimiser,
checkpoints and resume treat them like any other parameter; the fine-tuning start (``vitlab.weights.resolve(ref).build(num_classes=K)``) drops them. Randomness comes from
torch's global generator, which the engine seeds and checkpoints, so a resumed run corrupts the same patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError


def mpp_num_classes(in_chans: int, bits: int = 3) -> int:
    """Classes of the mean-colour target: (2^bits)^channels (512 for RGB at 3 bits)."""
    return (2**bits) ** in_chans


def mean_colour_targets(images: torch.Tensor, patch_size: int, bits: int = 3) -> torch.Tensor:
    """Class of each patch's mean colour, ``[B, N]`` in row-major patch order; images are in [-1, 1]."""
    levels = 2**bits
    means = F.avg_pool2d(images.float(), patch_size)  # [B, C, gh, gw]
    quantised = ((means + 1) / 2 * levels).floor().clamp(0, levels - 1).long()
    weights = levels ** torch.arange(images.shape[1], device=images.device)  # channel c counts levels^c
    return (quantised * weights[None, :, None, None]).sum(dim=1).flatten(1)  # [B, N]


@dataclass
class MaskedPatchPrediction:
    """The objective: cross-entropy on corrupted patches only; ``stats`` count correct corrupted patches."""

    corrupt_rate: float = 0.5
    mask_rate: float = 0.8  # of the corrupted: replaced by [mask]
    random_rate: float = 0.1  # of the corrupted: replaced by a random other patch (the rest stays unchanged)
    bits: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.corrupt_rate <= 1.0:
            raise ConfigError(f"masked patch prediction: corrupt_rate must be in (0, 1], got {self.corrupt_rate}")
        if self.mask_rate < 0 or self.random_rate < 0 or self.mask_rate + self.random_rate > 1:
            raise ConfigError("masked patch prediction: mask_rate + random_rate must lie in [0, 1]")

    def corrupt(self, tokens: torch.Tensor, mask_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupted patch embeddings ``[B, N, D]`` and the boolean map of corrupted positions ``[B, N]``."""
        batch, length, _ = tokens.shape
        device = tokens.device
        corrupted = torch.rand(batch, length, device=device) < self.corrupt_rate
        choice = torch.rand(batch, length, device=device)
        use_mask = corrupted & (choice < self.mask_rate)
        use_random = corrupted & (choice >= self.mask_rate) & (choice < self.mask_rate + self.random_rate)
        # A random patch embedding from anywhere in the batch (the paper: "a random other patch embedding").
        donors = torch.randint(0, batch * length, (batch, length), device=device)
        random_tokens = tokens.reshape(batch * length, -1)[donors]  # [B, N, D]
        out = torch.where(use_random[..., None], random_tokens, tokens)
        out = torch.where(use_mask[..., None], mask_token.to(out.dtype).expand_as(out), out)
        return out, corrupted

    def __call__(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        base = getattr(model, "module", model)  # DDP / FSDP wrappers keep the ViT in .module
        if not getattr(base.config, "mpp_classes", 0):
            raise ConfigError("masked patch prediction needs a ViT built with model.mpp_classes > 0 (512 for RGB)")
        if base.config.is_hybrid:
            raise ConfigError("masked patch prediction works on plain ViTs (patch colours), not hybrids")
        # Decided from the shapes (the largest colour class is (2^bits)^C - 1), not from this batch's labels:
        # reading their max to the host would stall a GPU's queue every step.
        if mpp_num_classes(images.shape[1], self.bits) > base.config.mpp_classes:
            raise ConfigError(
                f"model.mpp_classes={base.config.mpp_classes} is too small for {images.shape[1]}-channel images at "
                f"{self.bits} bits: need {mpp_num_classes(images.shape[1], self.bits)}"
            )
        labels = mean_colour_targets(images, base.config.patch_size, self.bits)  # [B, N]
        # Through the (possibly DDP / FSDP-wrapped) model's forward, so gradients are synchronised.
        logits, corrupted = model(images, corrupt=self.corrupt)
        logits = logits.float()  # [B, N, classes], every position
        # The mean over corrupted positions as a weighted mean over all of them: the same number, with shapes
        # that do not depend on the data (no host read on a GPU). No corrupted patch: loss 0, still differentiable.
        weights = corrupted.to(logits.dtype)  # [B, N]
        per_patch = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(weights)
        count = weights.sum()
        loss = (per_patch * weights).sum() / count.clamp(min=1.0)
        with torch.no_grad():
            correct = ((logits.argmax(-1) == labels) & corrupted).sum()
        return loss, {"correct": correct, "count": corrupted.sum()}
