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

import atexit
import logging
import math
import queue
import threading
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import numpy as np
import torch

from vitlab.data import transforms as T
from vitlab.data.base import FileSource, Source
from vitlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Payload:
    """What a batch maker hands back: the batch, bad files met while making it, or a user-facing error."""

    images: torch.Tensor | None
    targets: torch.Tensor | None
    bad_files: list
    error: str | None = None


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ConfigError(f"img_size must be an int or (height, width), got {size}")
    return size  # type: ignore[return-value]


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
            images, targets = self.make(epoch, step)
        except DataError as error:  # user-facing: carried back as text so workers don't wrap it in a traceback
            return Payload(None, None, list(self.source.bad_files[bad_before:]), str(error))
        return Payload(images, targets, list(self.source.bad_files[bad_before:]))

    def make(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        return finish_batch(x, y, draws, spec, self.in_chans, self.source.num_classes,
                            flipped=self.source.in_memory)

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

    def _decode(self, idx: np.ndarray, draws) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for j, i in enumerate(idx):
            image, label = self.source.load(int(i), size=self.img_size, crop=crop_fn(draws, j, self.spec))
            images.append(image)
            labels.append(label)
        x = torch.stack(images).to(self.device).float()
        return x, torch.as_tensor(labels, dtype=torch.int64, device=self.device)


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


class _KeyDataset(torch.utils.data.Dataset):
    def __init__(self, maker: BatchMaker):
        self.maker = maker

    def __getitem__(self, key):
        return self.maker(tuple(key))


class _Keys(torch.utils.data.Sampler):
    def __init__(self, keys: Iterator[tuple[int, int]]):
        self.keys = keys

    def __iter__(self):
        return self.keys


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # N workers x all cores each would oversubscribe the machine


# Batches made ahead by the background thread, where one is used (see :func:`default_prefetch`).
DEFAULT_PREFETCH = 2
# How long exit waits for a prefetch thread's batch in progress (files of huge images take seconds).
THREAD_JOIN_SECONDS = 60.0
_PREFETCH_THREADS: dict[threading.Thread, threading.Event] = {}  # running prefetch threads and their stop flags


@atexit.register
def _stop_prefetch_threads() -> None:
    """Stop every prefetch thread and wait for it before the interpreter finalises (see :func:`_threaded`)."""
    for thread, stop in list(_PREFETCH_THREADS.items()):
        stop.set()
        thread.join(timeout=THREAD_JOIN_SECONDS)


def _threaded(make, keys: Iterator, depth: int) -> Iterator[Payload]:
    """Run ``make`` over ``keys`` in a daemon thread, ``depth`` results ahead; stops when abandoned.

    Abandoning (closing the generator) only signals the thread, which ends after its batch in progress. At
    interpreter exit :func:`_stop_prefetch_threads` also waits for it: a daemon thread still inside a torch
    kernel while the interpreter finalises aborts the process ("terminate called without an active exception").
    Closing does not wait, because a thread that has just ended can still be releasing MKL's buffers, and a
    ``fork`` (DataLoader workers) in that moment copies MKL's allocator lock held: the child then spins forever.
    """
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for key in keys:
                if stop.is_set() or not put(("ok", make(key))):
                    return
            put(("end", None))
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            put(("err", error))
        finally:
            _PREFETCH_THREADS.pop(threading.current_thread(), None)  # exit need not wait for it any more

    thread = threading.Thread(target=work, name="vitlab-batches", daemon=True)
    _PREFETCH_THREADS[thread] = stop
    thread.start()
    try:
        while True:
            kind, item = results.get()
            if kind == "end":
                return
            if kind == "err":
                raise item
            yield item
    finally:
        stop.set()


class BatchStream:
    """Batches of ``(images float32 [B, C, H, W] in [-1, 1], targets int64 [B] or float32 [B, K])``.

    Training streams loop over epochs forever and can be checkpointed with :meth:`state_dict`;
    evaluation streams make one ordered pass. See :func:`build_stream`.
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

    def __len__(self) -> int:
        return self._len

    @property
    def bad_files(self) -> list[tuple[str, str]]:
        return self.source.bad_files

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
        keys = self._keys()
        if self.num_workers > 0:
            loader = torch.utils.data.DataLoader(
                _KeyDataset(self.maker), batch_size=None, sampler=_Keys(keys), num_workers=self.num_workers,
                prefetch_factor=max(self.prefetch, 1), pin_memory=self.device.type == "cuda",
                worker_init_fn=_worker_init)
            return iter(loader)
        if self.prefetch > 0:
            return _threaded(self.maker, keys, self.prefetch)
        return (self.maker(key) for key in keys)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for payload in self._payloads():
            if payload.bad_files and isinstance(self.source, FileSource):
                self.source.merge_bad_files(payload.bad_files)
            if payload.error is not None:
                raise DataError(payload.error)
            if self.train:
                self._batch += 1
                if self._batch == self._len:
                    self._epoch, self._batch = self._epoch + 1, 0
            yield (payload.images.to(self.device, non_blocking=True),
                   payload.targets.to(self.device, non_blocking=True))


def default_prefetch(source: Source, *, num_workers: int, device: torch.device) -> int:
    """Batches to make ahead when the caller does not say: none for an in-memory set trained on a CPU in-process,
    else :data:`DEFAULT_PREFETCH`.

    On a CPU the thread's kernels compete with the training step for the same cores. ``benchmarks/loader.py``
    ("cpu_training": Fashion-MNIST 28 -> 32 px, batch 64, the ``fmnist-vit-tiny`` model's forward + backward +
    AdamW, 2 cores): 1,037 images/s inline against 643 with the thread (``augment=none``), 947 vs 675 (``paper``),
    872 vs 570 (``light2``), while making one batch inline takes 1.0, 1.0 and 5.6 ms of the 62-73 ms step.
    """
    if num_workers == 0 and source.in_memory and device.type == "cpu":
        return 0
    return DEFAULT_PREFETCH


def build_stream(source: Source, *, batch_size: int, train: bool, img_size: int | tuple[int, int],
                 in_chans: int | None = None, augment: str = "none", seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, indices: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", prefetch: int | None = None) -> BatchStream:
    """A :class:`BatchStream` over ``source`` (see the module doc for the ordering contract).

    ``augment`` names a level of :data:`vitlab.data.transforms.AUGMENT_LEVELS` and only applies when
    ``train``; evaluation resizes to ``img_size`` and nothing else. ``indices`` restricts the stream to a
    subset (a split, k-shot set, or pre-training set minus de-dup exclusions). ``prefetch`` is how many
    batches are made ahead (0: make each batch when asked; None: :func:`default_prefetch`).
    """
    if prefetch is None:
        prefetch = default_prefetch(source, num_workers=num_workers, device=torch.device(device))
    if getattr(source, "streaming", False):
        from vitlab.data.shards import build_shard_stream

        return build_shard_stream(source, batch_size=batch_size, train=train, img_size=img_size,
                                  in_chans=in_chans, augment=augment, seed=seed, rank=rank,
                                  world_size=world_size, num_workers=num_workers, device=device,
                                  prefetch=prefetch)
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank} world_size={world_size}: need 0 <= rank < world_size")
    if num_workers < 0 or prefetch < 0:
        raise ConfigError(f"num_workers and prefetch must be >= 0, got {num_workers}, {prefetch}")
    spec = T.get_augment(augment)
    size = _pair(img_size)
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
