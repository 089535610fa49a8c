"""Data planning for a training run: which images train, which evaluate, and how many steps that makes.

The engine asks :func:`plan_data` once and gets a :class:`DataPlan` back: the training stream (sharded by rank),
the dev stream (a held-out share of the training split), the test stream, and the sizes the run needs to
resolve (classes, channels, image size, training-set size). :func:`total_steps` turns ``train.epochs`` into
optimiser steps. The config's data section is read by attribute, so this module needs nothing above ``data``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vitlab.data.dedup import load_exclusions
from vitlab.data.loader import build_stream
from vitlab.data.registry import get_source
from vitlab.data.splits import dev_split
from vitlab.data.stream import Stream
from vitlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DataPlan:
    """What a run resolved from the data: streams, sizes, classes."""

    train_stream: Stream
    dev_stream: Stream | None
    test_stream: Stream | None
    num_classes: int
    in_chans: int
    img_size: int
    train_size: int
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)  # the source's class names, carried by checkpoints
    source_channels: int = 3  # the images' own channels (before repeating grey to RGB), for preprocessing


def plan_data(data: Any, *, seed: int, batch_size: int, micro_batch_size: int, rank: int, world_size: int,
              device: str, evaluate_test: bool, in_chans: Callable[[], int | None],
              img_size: Callable[[], int]) -> DataPlan:
    """Streams for ``data`` (the config's data section: dataset, splits, options, dev_fraction, exclusions, ...).

    ``in_chans`` / ``img_size`` give the model's defaults when the config leaves them out (a pre-trained start
    fixes its channels; its image size is the model's own); they are asked only when needed.
    """
    source = get_source(data.dataset, split=data.train_split, **data.options)
    num_classes = int(source.num_classes)
    chans = data.in_chans or in_chans() or int(source.channels)
    size = data.img_size or img_size()
    dev_stream, indices = None, None
    if getattr(source, "streaming", False):  # remote / streamed shards: no random access, no index subsets
        if data.exclusions or data.dev_fraction:
            raise ConfigError("data.exclusions and data.dev_fraction need an indexed source; "
                              "streamed shards have no random access (set data.options.streaming=false)")
        try:
            train_size = len(source)
        except TypeError:
            raise ConfigError("a streamed shard source needs data.options.num_samples=N "
                              "(the number of training images) for epochs and logging") from None
    else:
        indices = np.arange(len(source), dtype=np.int64)
        if data.exclusions:
            indices = np.setdiff1d(indices, np.fromiter(load_exclusions(data.exclusions), dtype=np.int64))
            log.info("excluding %d near-duplicate images listed in %s", len(source) - len(indices), data.exclusions)
        if data.dev_fraction:
            train_idx, dev_idx = dev_split(source, data.dev_fraction, seed)
            indices = np.intersect1d(indices, np.asarray(train_idx, dtype=np.int64))
            dev_stream = build_stream(source, batch_size=data.eval_batch_size, train=False, img_size=size,
                                      in_chans=chans, indices=np.asarray(dev_idx, dtype=np.int64), device=device)
        train_size = len(indices)
        if train_size == len(source):
            indices = None  # the whole split
    if train_size < batch_size:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the {train_size} training images of "
                          f"{data.dataset}")
    train_stream = build_stream(source, batch_size=micro_batch_size, train=True, img_size=size, in_chans=chans,
                                augment=data.augment, seed=seed, rank=rank, world_size=world_size,
                                num_workers=data.num_workers, indices=indices, device=device)
    test_stream = None
    if data.test_split and evaluate_test:
        test_source = get_source(data.dataset, split=data.test_split, **data.options)
        test_stream = build_stream(test_source, batch_size=data.eval_batch_size, train=False, img_size=size,
                                   in_chans=chans, device=device)
    bad = list(getattr(source, "bad_files", []) or [])
    return DataPlan(train_stream, dev_stream, test_stream, num_classes, chans, size, train_size, bad,
                    classes=list(source.classes), source_channels=int(source.channels))


def total_steps(steps: int | None, epochs: float | None, *, train_size: int, batch_size: int) -> int:
    """Optimiser steps of a run: ``train.steps``, or ``train.epochs`` passes over the training images."""
    if steps is not None:
        return steps
    if epochs is not None:
        return max(1, math.ceil(epochs * train_size / batch_size))
    raise ConfigError("give train.steps or train.epochs")
