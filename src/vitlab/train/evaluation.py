"""Top-1 accuracy of a model over an evaluation stream, and of a saved checkpoint on a dataset.

The engine calls :func:`accuracy` on the dev and test splits; ``vitlab eval`` and other tools call
:func:`evaluate_checkpoint`. Accuracy is always a fraction in [0, 1].
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data import build_stream, get_source
from vitlab.errors import CheckpointError
from vitlab.train.distributed import pick_device
from vitlab.weights import resolve

log = logging.getLogger(__name__)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """``{"accuracy", "loss", "count"}`` over every batch (softmax cross-entropy as the loss)."""
    was_training = model.training
    model.eval()
    correct, count, loss_sum = 0, 0, 0.0
    try:
        for images, targets in batches:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if targets.ndim > 1:
                targets = targets.argmax(-1)
            with autocast(device, autocast_dtype):
                logits = model(images)
            logits = logits.float()  # [B, K]
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += int(targets.shape[0])
    finally:
        model.train(was_training)
    return {
        "accuracy": correct / count if count else float("nan"),
        "loss": loss_sum / count if count else float("nan"),
        "count": count,
    }


def objective_accuracy(
    objective: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """``{"accuracy", "loss", "count"}`` of a training objective on evaluation data (e.g. masked patch prediction:
    the share of corrupted patches whose colour class is predicted). The objective's randomness is drawn from
    ``seed`` inside a forked RNG, so every evaluation sees the same corruption and training's RNG is untouched."""
    was_training = model.training
    model.eval()
    correct, count, loss_sum = 0.0, 0.0, 0.0
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            for images, targets in batches:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                with autocast(device, autocast_dtype):
                    loss, stats = objective(model, images, targets)
                items = float(stats["count"])
                loss_sum += float(loss) * items
                correct += float(stats["correct"])
                count += items
    finally:
        model.train(was_training)
    return {
        "accuracy": correct / count if count else float("nan"),
        "loss": loss_sum / count if count else float("nan"),
        "count": int(count),
    }


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``; a null context for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def evaluate_checkpoint(
    path: str | Path,
    dataset: str,
    split: str = "test",
    img_size: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
    source_options: dict[str, Any] | None = None,
    **more_source_options: Any,
) -> dict[str, Any]:
    """Top-1 accuracy (a fraction) of a saved model on ``dataset``/``split``.

    ``path``: any weights reference :func:`vitlab.weights.resolve` reads (a ``.safetensors`` file, a run
    directory, an official ``.npz``, ``timm:NAME``, ``hf:NAME``). ``img_size`` evaluates at another
    resolution (position embeddings are interpolated); by default the model's own. Options for the data
    source go as keywords (``root="/data/pets"``) or, when a name clashes with a parameter here (the synthetic
    source's ``img_size``), in ``source_options``.
    """
    source_options = {**(source_options or {}), **more_source_options}
    weights = resolve(path)
    model = weights.build(img_size=img_size)
    config = model.config
    size = config.img_size[0] if isinstance(config.img_size, (tuple, list)) else config.img_size
    source = get_source(dataset, split=split, **source_options)
    num_classes = getattr(config, "num_classes", None)
    if num_classes and source.num_classes > num_classes:
        raise CheckpointError(
            f"{weights.ref}: the model has {num_classes} classes but {dataset} has {source.num_classes}"
        )
    torch_device = pick_device(device)
    model.to(torch_device)
    stream = build_stream(source, batch_size=batch_size, train=False, img_size=size,
                          in_chans=config.in_chans, device=str(torch_device))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    result = accuracy(model, stream, torch_device, dtype)
    return {
        "checkpoint": str(weights.path or weights.ref),
        "dataset": dataset,
        "split": split,
        "img_size": size,
        "accuracy": result["accuracy"],
        "loss": result["loss"],
        "num_examples": result["count"],
        "skipped_images": stream.dropped,  # unreadable with on_bad_image=skip: left out, never replaced
    }
