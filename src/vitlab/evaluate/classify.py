"""Classification accuracy helpers: top-k from logits, over a whole stream, per class with a confusion matrix,
and ReaL-style multi-label.

The paper reports top-1 accuracy everywhere (Table 2), and ImageNet "ReaL" accuracy, where an image counts
as right when the top-1 prediction is any of its re-assessed labels and images without labels are left out.
``vitlab eval`` adds what a user looks at next: top-5, accuracy per class and the confusion matrix
(``confusion.json``: ``{"classes": [...], "matrix": [[...]]}``, rows = true class, columns = predicted).
All accuracies here are fractions in [0, 1].
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data import build_stream, get_source
from vitlab.errors import CheckpointError, ShapeError
from vitlab.models.weights import inference_meta
from vitlab.train.distributed import pick_device
from vitlab.weights import resolve
from vitlab.weights.pretrained import with_inference_meta

log = logging.getLogger(__name__)


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


@torch.no_grad()
def classification_report(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                          *, device: torch.device | str = "cpu", classes: Sequence[str] | None = None
                          ) -> dict[str, Any]:
    """Top-1, top-5, loss, accuracy per class and the confusion matrix of ``model`` over every batch.

    ``per_class`` lists ``{"class", "count", "accuracy"}`` (accuracy None for a class without test images);
    ``confusion`` is ``{"classes", "matrix"}`` with rows = true class, columns = predicted class.
    """
    names = [str(c) for c in classes] if classes is not None else [f"class_{i}" for i in range(num_classes)]
    was_training = model.training
    model.eval()
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    top5 = 0
    loss_sum = 0.0
    try:
        for images, targets in batches:
            logits = model(images.to(device)).float().cpu()  # [B, K]
            targets = targets.cpu()
            if targets.ndim > 1:
                targets = targets.argmax(-1)
            if logits.shape[1] < num_classes:
                raise ShapeError(f"the model gives {logits.shape[1]} logits but the data has {num_classes} classes")
            logits = logits[:, :num_classes]
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            top5 += topk_correct(logits, targets, (5,))[5]
            matrix += torch.bincount(targets * num_classes + logits.argmax(1),
                                     minlength=num_classes * num_classes).view(num_classes, num_classes)
    finally:
        model.train(was_training)
    count = int(matrix.sum())
    per_class = []
    for i, name in enumerate(names):
        n = int(matrix[i].sum())
        per_class.append({"class": name, "count": n, "accuracy": int(matrix[i, i]) / n if n else None})
    return {
        "accuracy": int(matrix.diag().sum()) / count if count else float("nan"),
        "top5": top5 / count if count else float("nan"),
        "loss": loss_sum / count if count else float("nan"),
        "count": count,
        "per_class": per_class,
        "confusion": {"classes": names, "matrix": matrix.tolist()},
    }


def load_checkpoint_model(ref: str | Path, img_size: int | None = None) -> tuple[nn.Module, str]:
    """The model of a weights reference (:func:`vitlab.weights.resolve`) and the file it came from."""
    weights = resolve(str(ref))
    model = with_inference_meta(weights.build(img_size=img_size), weights)
    return model, str(weights.path or weights.ref)


def evaluate_checkpoint_report(ref: str | Path, dataset: str, *, split: str = "test", img_size: int | None = None,
                               batch_size: int = 256, device: str = "auto",
                               source_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``vitlab eval``'s numbers for a saved model on ``dataset``/``split``: top-1 (``accuracy``), top-5, loss,
    per-class accuracy and the confusion matrix, with the class names of the data source."""
    model, path = load_checkpoint_model(ref, img_size)
    config = model.config
    size = config.img_size[0] if isinstance(config.img_size, (tuple, list)) else config.img_size
    source = get_source(dataset, split=split, **(source_options or {}))
    num_classes = getattr(config, "num_classes", None)
    if num_classes and source.num_classes > num_classes:
        raise CheckpointError(f"{path}: the model has {num_classes} classes but {dataset} has {source.num_classes}")
    saved = inference_meta(model).get("classes")
    if saved and list(saved[:source.num_classes]) != list(source.classes):
        log.warning("%s was trained on classes %s... but %s/%s has %s...", path, saved[:4], dataset, split,
                    list(source.classes)[:4])
    torch_device = pick_device(device)
    model.to(torch_device)
    stream = build_stream(source, batch_size=batch_size, train=False, img_size=size, in_chans=config.in_chans,
                          device=str(torch_device))
    report = classification_report(model, stream, source.num_classes, device=torch_device, classes=source.classes)
    bad = list(getattr(source, "bad_files", []) or [])
    return {"checkpoint": str(path), "dataset": dataset, "split": split, "img_size": size,
            "num_examples": report.pop("count"), **report, "bad_files": [list(b) for b in bad]}
