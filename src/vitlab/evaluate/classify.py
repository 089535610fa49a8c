"""Classification accuracy helpers: top-k from logits, over a whole stream, and ReaL-style multi-label.

The paper reports top-1 accuracy everywhere (Table 2), and ImageNet "ReaL" accuracy, where an image counts
as right when the top-1 prediction is any of its re-assessed labels and images without labels are left out.
All accuracies here are fractions in [0, 1].
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from vitlab.errors import ShapeError


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows of ``logits [B, K]`` have their target among the top ``k`` scores, per ``k``.

    A ``k`` larger than the number of classes counts every row (the target is always among all classes).
    """
    if logits.ndim != 2:
        raise ShapeError(f"logits must be [B, K], got shape {tuple(logits.shape)}")
    if targets.ndim > 1:
        targets = targets.argmax(-1)  # soft / one-hot targets
    if len(targets) != len(logits):
        raise ShapeError(f"{len(logits)} rows of logits but {len(targets)} targets")
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # [B, kmax]
    hits = top == targets.view(-1, 1)  # [B, kmax]
    return {k: int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks}


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` as fractions for one batch of logits."""
    counts = topk_correct(logits, targets, ks)
    return {f"top{k}": counts[k] / max(len(logits), 1) for k in ks}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                        device: torch.device | str = "cpu", ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies of ``model`` over every batch: ``{"top1", "top5", "count"}``."""
    was_training = model.training
    model.eval()
    correct = {k: 0 for k in ks}
    count = 0
    try:
        for images, targets in batches:
            logits = model(images.to(device)).float().cpu()
            for k, n in topk_correct(logits, targets.cpu(), ks).items():
                correct[k] += n
            count += len(logits)
    finally:
        model.train(was_training)
    result: dict[str, float] = {f"top{k}": (correct[k] / count if count else float("nan")) for k in ks}
    result["count"] = count
    return result


def real_accuracy(logits: torch.Tensor, label_sets: Sequence[Sequence[int]]) -> tuple[float, int]:
    """ReaL-style top-1: right when the prediction is in the image's label set; empty sets are skipped.

    Returns ``(accuracy, images counted)``.
    """
    if len(label_sets) != len(logits):
        raise ShapeError(f"{len(logits)} rows of logits but {len(label_sets)} label sets")
    predictions = logits.argmax(dim=1).tolist()
    scored = [(p, set(s)) for p, s in zip(predictions, label_sets) if len(s)]
    if not scored:
        return float("nan"), 0
    return sum(p in s for p, s in scored) / len(scored), len(scored)
