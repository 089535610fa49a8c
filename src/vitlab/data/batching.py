"""Pieces every batch stream shares: the batch-level augmentation stages, the payload a batch travels in, and
the one executor that makes batches (inline, or in persistent DataLoader worker processes).

Why no prefetch thread: on a CPU a thread's kernels run on the cores the training step is using, and for
in-memory sets making batches inline was measured faster (``benchmarks/loader.py``, ``cpu_training``; figures in
``docs/data.md``). On a GPU an in-memory set is augmented on the device, where kernels queue asynchronously
anyway. Decoding files is the work that needs to overlap the step: DataLoader worker processes do it
(``data.num_workers``), kept alive between evaluation passes (``persistent_workers``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from vitlab.data import transforms as T
from vitlab.errors import ConfigError

# Batches each worker process makes ahead (DataLoader's prefetch_factor).
DEFAULT_PREFETCH = 2


@dataclass
class Payload:
    """What a batch maker hands back: the batch (None when every image of it was dropped), bad files met while
    making it, images an evaluation batch left out, a user-facing error, and where the batch came from."""

    images: torch.Tensor | None
    targets: torch.Tensor | None
    bad_files: list = field(default_factory=list)
    error: str | None = None
    dropped: int = 0
    key: tuple[int, ...] = ()


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ConfigError(f"img_size must be an int or (height, width), got {size}")
    return size  # type: ignore[return-value]


def finish_batch(x: torch.Tensor, y: torch.Tensor, draws: T.Draws | None, spec: T.AugmentSpec, in_chans: int,
                 num_classes: int, flipped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-level stages after crop/resize: shift, flip, RandAugment, mixing, [-1, 1], channels, erasing.

    ``x`` is float ``[B, C, H, W]`` with values 0..255; ``draws`` is None for evaluation (no augmentation).
    Mixing commutes with the affine [-1, 1] scaling and with repeating grey to RGB, so it runs on the
    (possibly single-channel) pixels first; erasing noise lives in normalised space, so it runs last.
    """
    if draws is not None and spec.shift:
        x = T.translate(x, draws.shift, spec.shift)
    if draws is not None and spec.flip and not flipped:
        x = T.flip(x, draws.flip)
    if draws is not None and spec.randaug_layers:
        x = T.rand_augment(x, draws, spec.randaug_layers, spec.randaug_magnitude)
    if draws is not None and spec.soft_targets:
        x, y = T.mix(x, y, num_classes, draws, spec)  # y: [B, K]
    x = T.adapt_channels(T.normalize(x), in_chans)  # [B, C, H, W] in [-1, 1]
    if draws is not None and spec.erase_prob > 0:
        x = T.random_erase(x, draws)
    return x.contiguous(), y


def crop_fn(draws: T.Draws | None, row: int, spec: T.AugmentSpec):
    """The crop callback for one sample decoded from a file (None: take the whole image)."""
    return partial(_crop_box, draws.crop[row]) if draws is not None and spec.crop else None


def _crop_box(uniforms: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    box = T.inception_crop_boxes(np.array([width]), np.array([height]), uniforms[None])[0]
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # N workers x all cores each would oversubscribe the machine


def worker_loader(dataset: Any, *, num_workers: int, prefetch: int, device: torch.device,
                  sampler: Iterable | None = None, persistent: bool = True) -> torch.utils.data.DataLoader:
    """A DataLoader whose items are whole :class:`Payload` batches, made by (persistent) worker processes."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=num_workers,
                                       prefetch_factor=max(prefetch, 1), persistent_workers=persistent,
                                       pin_memory=device.type == "cuda", worker_init_fn=_worker_init)


def validate(*, batch_size: int, rank: int, world_size: int, num_workers: int, prefetch: int) -> None:
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank} world_size={world_size}: need 0 <= rank < world_size")
    if num_workers < 0 or prefetch < 0:
        raise ConfigError(f"num_workers and prefetch must be >= 0, got {num_workers}, {prefetch}")
