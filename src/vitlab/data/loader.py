"""``build_stream``: turn a source into an endless (training) or single-pass (evaluation) batch stream.

Design in one paragraph: a batch is a pure function of ``(epoch, step)`` (:class:`BatchMaker`). Epoch
``e`` visits a permutation drawn from ``(seed, e)``; global batch ``s`` is ``perm[s*G:(s+1)*G]`` with
``G = batch_size * world_size`` and rank ``r`` takes the r-th slice of ``batch_size``; every random number
the augmentation needs comes from ``(seed, epoch, step)`` (:func:`vitlab.data.transforms.draw`) with one
row per global position. So a batch does not depend on when or where it is made: the stream can make
batches ahead in a thread or in worker processes, resume from ``{"epoch", "batch"}`` exactly, and a run on
1 process with batch 2B sees the same global batches as 2 processes with batch B.

Where batches are made: with ``num_workers=0`` a background thread stays ``prefetch`` batches ahead (torch
releases the GIL in its kernels, so augmentation overlaps a GPU's training step or a file's decoding); with
``num_workers>0`` DataLoader worker processes each make whole batches (file decoding belongs there). An
in-memory set trained on a CPU is made inline by default: the thread's kernels would run on the cores the
training step is using, and two intra-op thread teams on the same cores cost a small ViT a third to a half of
its training speed (:func:`default_prefetch`).
"""
from __future__ import annotations

import logging
import math
from typing import Iterator, Sequence

import numpy as np
import torch

from vitlab.data import transforms as T
from vitlab.data.base import FileSource, Source
from vitlab.data.batching import DEFAULT_PREFETCH, Payload, crop_fn, finish_batch, pair, validate, worker_loader
from vitlab.data.shards import build_shard_stream
from vitlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class BatchMaker:
    """``(epoch, step) -> Payload``; holds no mutable state that changes results (the permutation is a cache)."""

    def __init__(self, source: Source, table: np.ndarray, *, spec: T.AugmentSpec, img_size: tuple[int, int],
                 in_chans: int, batch_size: int, world_size: int, rank: int, seed: int, train: bool,
                 device: torch.device):
        self.source = source
        self.table = table  # position -> source index
        self.spec = spec
        self.img_size = img_size
        self.in_chans = in_chans
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.train = train
        self.device = device
        self._perm_cache: tuple[int, np.ndarray] | None = None  # (epoch, permutation), swapped atomically

    def permutation(self, epoch: int) -> np.ndarray:
        cached = self._perm_cache
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x5EED, epoch])
            cached = (epoch, rng.permutation(len(self.table)))
            self._perm_cache = cached
        return cached[1]

    def indices(self, epoch: int, step: int) -> np.ndarray:
        """Source indices of this rank's part of global batch ``step``."""
        if self.train:
            g = self.batch_size * self.world_size
            start = step * g + self.rank * self.batch_size
            return self.table[self.permutation(epoch)[start:start + self.batch_size]]
        start = step * self.batch_size
        return self.table[start:start + self.batch_size]

    def __call__(self, key: tuple[int, int]) -> Payload:
        epoch, step = key
        bad_before = len(self.source.bad_files)
        try:
            images, targets, dropped = self.make(epoch, step)
        except DataError as error:  # user-facing: carried back as text so workers don't wrap it in a traceback
            return Payload(None, None, list(self.source.bad_files[bad_before:]), str(error))
        return Payload(images, targets, list(self.source.bad_files[bad_before:]), dropped=dropped, key=key)

    def make(self, epoch: int, step: int) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """The batch and how many of its images were left out (evaluation only; None when all were)."""
        spec, train = self.spec, self.train
        idx = self.indices(epoch, step)
        draws = None
        if train:
            g = self.batch_size * self.world_size
            rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            draws = T.draw(spec, self.seed, epoch, step, g).rows(rows.start, rows.stop)
        if self.source.in_memory:
            x, y = self._gather(idx, draws)
        else:
            x, y = self._decode(idx, draws)
            if x is None:
                return None, None, len(idx)
        dropped = len(idx) - len(x)
        x, y = finish_batch(x, y, draws, spec, self.in_chans, self.source.num_classes,
                            flipped=self.source.in_memory)
        return x, y, dropped

    def _gather(self, idx: np.ndarray, draws) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.int64)
        images = self.source.images.index_select(0, index).to(self.device, non_blocking=True)  # uint8
        labels = self.source.labels.index_select(0, index).to(self.device, non_blocking=True)
        boxes = flips = None
        if draws is not None and self.spec.crop:
            h, w = images.shape[-2:]
            boxes = T.inception_crop_boxes(np.full(len(idx), w), np.full(len(idx), h), draws.crop)
        if draws is not None and self.spec.flip:
            flips = draws.flip  # folded into the resampling matrices
        return T.resize(images, self.img_size, boxes, flips), labels

    def _decode(self, idx: np.ndarray, draws) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        images, labels = [], []
        for j, i in enumerate(idx):
            # training: the next good sample stands in for a bad one; evaluation: it is left out (None)
            got = self.source.load(int(i), size=self.img_size, crop=crop_fn(draws, j, self.spec),
                                   substitute=self.train)
            if got is not None:
                images.append(got[0])
                labels.append(got[1])
        if not images:
            return None, None
        x = torch.stack(images).to(self.device).float()
        return x, torch.as_tensor(labels, dtype=torch.int64, device=self.device)


class _KeyDataset(torch.utils.data.Dataset):
    def __init__(self, maker: BatchMaker):
        self.maker = maker

    def __getitem__(self, key):
        return self.maker(tuple(key))


class _Keys(torch.utils.data.Sampler):
    """The stream's keys from its position when an iteration starts (the DataLoader outlives iterations)."""

    def __init__(self, stream: "BatchStream"):
        self.stream = stream

    def __iter__(self):
        return self.stream._keys()


class BatchStream:
    """Batches of ``(images float32 [B, C, H, W] in [-1, 1], targets int64 [B] or float32 [B, K])``.

    Training streams loop over epochs forever and can be checkpointed with :meth:`state_dict`;
    evaluation streams make one ordered pass per iteration. See :func:`build_stream` and
    :class:`vitlab.data.stream.Stream`.
    """

    def __init__(self, source: Source, maker: BatchMaker, *, train: bool, num_workers: int, prefetch: int,
                 device: torch.device, batches_per_epoch: int):
        self.source = source
        self.maker = maker
        self.train = train
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.device = device
        self.batch_size = maker.batch_size
        self.num_classes = source.num_classes
        self.soft_targets = train and maker.spec.soft_targets
        self._len = batches_per_epoch
        self._epoch = 0
        self._batch = 0
        self._dropped = 0
        self._loader: torch.utils.data.DataLoader | None = None  # made at the first iteration, then kept

    def __len__(self) -> int:
        return self._len

    @property
    def bad_files(self) -> list[tuple[str, str]]:
        return self.source.bad_files

    @property
    def dropped(self) -> int:
        """Unreadable images the last evaluation pass left out (``on_bad_image="skip"``)."""
        return self._dropped

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"stream state must be {{'epoch': int, 'batch': int}}, got {state!r}") from None
        if epoch < 0 or not 0 <= batch <= self._len:
            raise ConfigError(f"stream state {state} out of range (batches per epoch: {self._len})")
        self._epoch, self._batch = (epoch + 1, 0) if batch == self._len else (epoch, batch)

    def _keys(self) -> Iterator[tuple[int, int]]:
        if not self.train:
            yield from ((0, step) for step in range(self._len))
            return
        epoch, step = self._epoch, self._batch
        while True:
            yield epoch, step
            step += 1
            if step == self._len:
                epoch, step = epoch + 1, 0

    def _payloads(self) -> Iterator[Payload]:
        if self.num_workers == 0:
            return (self.maker(key) for key in self._keys())
        if self._loader is None:
            self._loader = worker_loader(_KeyDataset(self.maker), sampler=_Keys(self), num_workers=self.num_workers,
                                         prefetch=self.prefetch, device=self.device)
        return iter(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._dropped = 0
        for payload in self._payloads():
            if payload.bad_files and isinstance(self.source, FileSource):
                self.source.merge_bad_files(payload.bad_files)
            if payload.error is not None:
                raise DataError(payload.error)
            self._dropped += payload.dropped
            if self.train:
                self._batch += 1
                if self._batch == self._len:
                    self._epoch, self._batch = self._epoch + 1, 0
            if payload.images is None:  # evaluation: every image of this batch was unreadable
                continue
            yield (payload.images.to(self.device, non_blocking=True),
                   payload.targets.to(self.device, non_blocking=True))


def build_stream(source: Source, *, batch_size: int, train: bool, img_size: int | tuple[int, int],
                 in_chans: int | None = None, augment: str = "none", seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, indices: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", prefetch: int = DEFAULT_PREFETCH) -> BatchStream:
    """A :class:`BatchStream` over ``source`` (see the module doc for the ordering contract).

    ``augment`` names a level of :data:`vitlab.data.transforms.AUGMENT_LEVELS` and only applies when
    ``train``; evaluation resizes to ``img_size`` and nothing else. ``indices`` restricts the stream to a
    subset (a split, k-shot set, or pre-training set minus de-dup exclusions). ``num_workers`` worker
    processes make batches, each ``prefetch`` batches ahead; with 0 they are made inline when asked for.
    """
    validate(batch_size=batch_size, rank=rank, world_size=world_size, num_workers=num_workers, prefetch=prefetch)
    if getattr(source, "streaming", False):
        return build_shard_stream(source, batch_size=batch_size, train=train, img_size=img_size,
                                  in_chans=in_chans, augment=augment, seed=seed, rank=rank,
                                  world_size=world_size, num_workers=num_workers, device=device,
                                  prefetch=prefetch)
    spec = T.get_augment(augment)
    size = pair(img_size)
    in_chans = source.channels if in_chans is None else int(in_chans)
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans={in_chans}; expected 1 or 3")
    table = np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if table.ndim != 1:
        raise ConfigError(f"indices must be one-dimensional, got shape {table.shape}")
    if len(table) and (table.min() < 0 or table.max() >= len(source)):
        raise DataError(f"indices span {table.min()}..{table.max()}, outside the source's 0..{len(source) - 1}")
    device = torch.device(device)
    if train:
        per_epoch = len(table) // (batch_size * world_size)
        if per_epoch == 0:
            raise DataError(f"{getattr(source, 'name', 'source')}: {len(table)} samples cannot fill one global "
                            f"batch of {batch_size} x {world_size} ranks")
    else:
        per_epoch = math.ceil(len(table) / batch_size)
    # Workers cannot use CUDA; in-memory sets augment on the target device in-process, files on CPU.
    make_on = device if (num_workers == 0 and source.in_memory) else torch.device("cpu")
    maker = BatchMaker(source, table, spec=spec, img_size=size, in_chans=in_chans, batch_size=batch_size,
                       world_size=world_size, rank=rank if train else 0, seed=seed, train=train, device=make_on)
    return BatchStream(source, maker, train=train, num_workers=num_workers, prefetch=prefetch, device=device,
                       batches_per_epoch=per_epoch)
