"""Training objectives: what loss a model pays on one batch.

An objective is any callable ``objective(model, images, targets) -> (loss, stats)`` where ``loss`` is a scalar
(mean over the batch) and ``stats`` holds summed counts for logging (``correct``, ``count``). The engine does
not know which objective it runs, so masked patch prediction (Section 4.6) can be added as another callable
that corrupts patches inside and returns its own loss.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.train.mpp import MaskedPatchPrediction


class Objective(Protocol):
    def __call__(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """``[B]`` class indices or ``[B, K]`` soft labels (mixup) -> ``[B, K]`` float, with label smoothing."""
    if targets.ndim == 1:
        dense = F.one_hot(targets.long(), num_classes).float()
    else:
        dense = targets.float()
    if smoothing:
        dense = dense * (1.0 - smoothing) + smoothing / num_classes
    return dense


def hard_targets(targets: torch.Tensor) -> torch.Tensor:
    return targets if targets.ndim == 1 else targets.argmax(dim=-1)


@dataclass(frozen=True)
class Supervised:
    """Classification: softmax cross-entropy, or sigmoid cross-entropy summed over classes.

    The paper pre-trains on JFT and ImageNet-21k with a sigmoid loss (labels there are multi-label) and uses
    softmax elsewhere. Both take hard or soft targets and optional label smoothing. Logits are promoted to
    float32 before the loss so bf16/fp16 autocast does not cost precision in the log-sum-exp.
    """

    loss: str = "softmax"  # softmax | sigmoid
    label_smoothing: float = 0.0
    # The loss reads the logits only, so a ViT may compute its last block for the class token alone (same
    # logits and gradients, fewer FLOPs: see VisionTransformer.forward_features). False: the full forward pass.
    last_block_cls_only: bool = True

    def __call__(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.last_block_cls_only and getattr(_unwrapped(model), "offers_last_block_cls_only", False):
            logits = model(images, last_block_cls_only=True).float()  # [B, K]
        else:
            logits = model(images).float()
        if self.loss == "softmax" and targets.ndim == 1:  # class indices: torch's fused kernel
            loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        else:
            dense = soft_targets(targets, logits.shape[-1], self.label_smoothing)  # [B, K]
            if self.loss == "sigmoid":
                loss = F.binary_cross_entropy_with_logits(logits, dense, reduction="none").sum(-1).mean()
            else:
                loss = torch.sum(-dense * F.log_softmax(logits, dim=-1), dim=-1).mean()
        with torch.no_grad():
            correct = (logits.argmax(-1) == hard_targets(targets).to(logits.device)).sum()
        return loss, {"correct": correct, "count": torch.tensor(images.shape[0], device=logits.device)}


_SPLIT_METRIC = re.compile(r"^(train|dev|test)_(accuracy|loss)$")


def metric_name(objective: str, key: str) -> str:
    """The name a metric is logged and reported under, saying what it measures.

    Classification keeps ``test_accuracy`` (top-1 over classes). Masked patch prediction scores the colour class
    of corrupted patches, not the image class, so its metrics read ``mpp_test_patch_accuracy`` and
    ``mpp_test_loss``: a patch score must never pass for a classification score in a table or a plot.
    """
    match = _SPLIT_METRIC.match(key)
    if objective != "mpp" or match is None:
        return key
    split, quantity = match.groups()
    return f"mpp_{split}_patch_accuracy" if quantity == "accuracy" else f"mpp_{split}_loss"


def named_metrics(objective: str, record: dict) -> dict:
    """``record`` with every key renamed by :func:`metric_name`."""
    return {metric_name(objective, key): value for key, value in record.items()}


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module a DDP wrapper holds (FSDP2 shards the module in place, so it is the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def build_objective(loss: str, label_smoothing: float, objective: str = "classify") -> Objective:
    """The objective a config names: supervised classification, or masked patch prediction (``"mpp"``)."""
    if objective == "mpp":
        return MaskedPatchPrediction()
    return Supervised(loss=loss, label_smoothing=label_smoothing)
