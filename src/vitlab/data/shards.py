"""Sharded tar datasets in the WebDataset layout, read locally or streamed, split by rank and worker.

A shard is a plain tar file; a sample is the group of consecutive members sharing a key (the path up to
the first dot of the file name): ``n01440764_10026.jpg`` + ``n01440764_10026.cls`` (the label as decimal
text). Shards are named by a list (``urls=``) or a brace pattern (``pattern="data/train-{000000..000127}.tar"``);
entries may be local paths, ``file://``, ``http(s)://`` URLs or ``pipe:<command>`` (e.g.
``pipe:aws s3 cp s3://bucket/shard-0001.tar -``), so data that fits no single disk can be streamed.

Two ways to read them:

* **indexed** (default for local shards): the tar headers are scanned once (no image is decoded) and every
  sample becomes addressable, so the stream keeps the full ordering contract of
  :func:`vitlab.data.build_stream` (global permutation, rank slices, exact resume, ``indices=``);
* **streaming** (``streaming=True``, the default when any shard is remote): each epoch shuffles the shard
  order from ``(seed, epoch)``; rank ``r`` of ``W`` reads shards ``r, r+W, ...`` and worker ``w`` of a rank's
  ``N`` workers every N-th of those; samples pass through a seeded shuffle buffer. Use at least
  ``W x max(N, 1)`` shards. Resume skips the consumed batches without decoding them; it is exact with
  ``num_workers=0``, and with workers as long as no worker has run dry in the current epoch (the last
  few batches of an epoch may come in a different order after a resume).
"""
from __future__ import annotations

import glob
import itertools
import logging
import math
import os
import re
import subprocess
import tarfile
import urllib.request
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from vitlab.data import transforms as T
from vitlab.data.base import FileSource
from vitlab.data.images import DEFAULT_MAX_PIXELS, BadImage, load_image
from vitlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
LABEL_KEYS = ("cls", "label", "class", "target")
_REMOTE = ("http://", "https://", "pipe:", "s3://", "gs://")


def expand_pattern(pattern: str) -> list[str]:
    """Brace ranges ``{000..127}`` (zero padding kept) and lists ``{a,b}``; then a glob for local paths."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match:
        body = match.group(1)
        head, tail = pattern[:match.start()], pattern[match.end():]
        ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if ranged:
            lo, hi = ranged.groups()
            width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
            items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        else:
            items = body.split(",")
        return [out for item in items for out in expand_pattern(head + item + tail)]
    if not pattern.startswith(_REMOTE) and any(c in pattern for c in "*?["):
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise DataError(f"shard pattern {pattern!r} matches no files")
        return found
    return [pattern]


def open_shard(url: str):
    """A readable binary stream for a shard (local path, file://, http(s)://, or pipe:command)."""
    try:
        if url.startswith(("http://", "https://")):
            return urllib.request.urlopen(url, timeout=60)
        if url.startswith("pipe:"):
            proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)
            return proc.stdout
        path = url[7:] if url.startswith("file://") else os.path.expanduser(url)
        return open(path, "rb")
    except OSError as error:
        raise DataError(f"shard {url}: cannot open ({getattr(error, 'reason', None) or error})") from None


def _split_key(name: str) -> tuple[str, str]:
    directory, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (f"{directory}/{key}" if directory else key), ext.lower()


def iter_records(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for every sample of one shard, reading it as a stream."""
    stream = open_shard(url)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            key, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_key(member.name)
                if k != key and key is not None:
                    yield key, parts
                    parts = {}
                key = k
                parts[ext] = tar.extractfile(member).read()
            if key is not None:
                yield key, parts
    except tarfile.TarError as error:
        raise DataError(f"shard {url}: not a readable tar file ({error})") from None
    finally:
        stream.close()


def _parse_label(raw: bytes | None, where: str) -> int:
    if raw is None:
        raise BadImage(where, f"no label member ({'/'.join(LABEL_KEYS)})")
    try:
        return int(raw.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise BadImage(where, f"label {raw[:20]!r} is not an integer") from None


def _pick(parts: dict, keys: Sequence[str]) -> bytes | None:
    for k in keys:
        if k in parts:
            return parts[k]
    return None


@dataclass
class _Entry:
    shard: str
    key: str
    offset: int
    size: int


class ShardSource(FileSource):
    """Tar shards as a source. Indexed (random access) for local shards unless ``streaming=True``."""

    def __init__(self, split: str = "train", *, urls: Sequence[str] | str | None = None, pattern: str | None = None,
                 classes: Sequence[str] | None = None, num_classes: int | None = None, channels: int = 3,
                 on_bad_image: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS, streaming: bool | None = None,
                 num_samples: int | None = None, shuffle_buffer: int = 1000):
        if (urls is None) == (pattern is None):
            raise ConfigError("shards: give exactly one of urls=[...] or pattern='...{000..009}.tar'")
        shard_list = [urls] if isinstance(urls, str) else list(urls or [])
        if pattern is not None:
            shard_list = expand_pattern(pattern)
        shard_list = [u for item in shard_list for u in (expand_pattern(item) if "{" in item else [item])]
        if not shard_list:
            raise ConfigError("shards: the shard list is empty")
        super().__init__(name=f"shards:{split}", channels=channels, on_bad_image=on_bad_image,
                         max_pixels=max_pixels)
        self.urls = shard_list
        self.streaming = any(u.startswith(_REMOTE) for u in shard_list) if streaming is None else bool(streaming)
        self.shuffle_buffer = int(shuffle_buffer)
        self.entries: dict[str, _Entry] = {}  # by sample name (path:key), so subsets of paths stay valid
        if not self.streaming:
            self._index()
            labels = self.labels
            top = int(labels.max()) + 1 if len(labels) else 0
        else:
            top = 0
        if classes is not None:
            self.classes = list(classes)
        elif num_classes is not None:
            self.classes = [f"class_{k}" for k in range(int(num_classes))]
        elif not self.streaming:
            self.classes = [f"class_{k}" for k in range(top)]
        else:
            raise ConfigError("shards: streaming needs classes=[...] or num_classes=N (labels are not scanned)")
        if not self.streaming and len(self.labels) and top > len(self.classes):
            bad = int(torch.nonzero(self.labels >= len(self.classes))[0])
            raise DataError(f"{self.paths[bad]}: label {int(self.labels[bad])} out of range "
                            f"0..{len(self.classes) - 1}")
        self.num_samples = len(self.paths) if not self.streaming else num_samples

    def __len__(self) -> int:
        if self.streaming:
            if self.num_samples is None:
                raise TypeError("a streamed shard source has no known length; pass num_samples=")
            return int(self.num_samples)
        return len(self.paths)

    # -- indexed mode -------------------------------------------------------------------------------
    def _index(self) -> None:
        """Scan tar headers: one entry (shard, key, image offset, size) and label per sample."""
        paths, labels = [], []
        for url in self.urls:
            path = url[7:] if url.startswith("file://") else os.path.expanduser(url)
            try:
                tar = tarfile.open(path, "r:")
            except (OSError, tarfile.TarError) as error:
                raise DataError(f"shard {url}: not a readable uncompressed tar file ({error})") from None
            with tar:
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                order: list[str] = []
                for member in tar.getmembers():
                    if not member.isfile():
                        continue
                    key, ext = _split_key(member.name)
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    groups[key][ext] = member
                for key in order:
                    parts = groups[key]
                    where = f"{url}:{key}"
                    image = _pick(parts, IMAGE_KEYS)
                    try:
                        label_member = _pick(parts, LABEL_KEYS)
                        label = _parse_label(tar.extractfile(label_member).read() if label_member else None,
                                             where)
                        if image is None:
                            raise BadImage(where, f"no image member ({'/'.join(IMAGE_KEYS)})")
                        if label < 0:
                            raise BadImage(where, f"label {label} is negative")
                    except BadImage as error:
                        if self.on_bad_image == "error":
                            raise
                        self.bad_files.append((where, error.reason))
                        continue
                    self.entries[where] = _Entry(path, key, image.offset_data, image.size)
                    paths.append(where)
                    labels.append(label)
        if not paths:
            raise DataError(f"shards {self.urls[:3]}...: no samples found")
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def image_input(self, index: int) -> bytes:
        entry = self.entries[self.paths[index]]
        try:
            with open(entry.shard, "rb") as handle:
                handle.seek(entry.offset)
                data = handle.read(entry.size)
        except OSError as error:
            raise BadImage(self.paths[index], f"cannot read ({error.strerror or error})") from None
        if len(data) != entry.size:
            raise BadImage(self.paths[index], f"shard truncated: got {len(data)} of {entry.size} bytes")
        return data

    # -- streaming mode -----------------------------------------------------------------------------
    def shard_order(self, epoch: int, seed: int, train: bool) -> list[str]:
        if not train:
            return list(self.urls)
        perm = np.random.default_rng([seed & 0xFFFFFFFF, 0x54A2D, epoch]).permutation(len(self.urls))
        return [self.urls[i] for i in perm]

    def iter_samples(self, urls: Sequence[str], rng: np.random.Generator | None) -> Iterator[tuple[str, bytes, int]]:
        """(name, image bytes, label) over ``urls``; through a shuffle buffer when ``rng`` is given."""
        def raw():
            for url in urls:
                for key, parts in iter_records(url):
                    where = f"{url}:{key}"
                    image = _pick(parts, IMAGE_KEYS)
                    try:
                        label = _parse_label(_pick(parts, LABEL_KEYS), where)
                        if image is None:
                            raise BadImage(where, f"no image member ({'/'.join(IMAGE_KEYS)})")
                        if not 0 <= label < self.num_classes:
                            raise BadImage(where, f"label {label} out of range 0..{self.num_classes - 1}")
                    except BadImage as error:
                        if self.on_bad_image == "error":
                            raise
                        self.record_bad_name(where, error.reason)
                        continue
                    yield where, image, label

        if rng is None or self.shuffle_buffer <= 1:
            yield from raw()
            return
        buffer: list = []
        for item in raw():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], item = item, buffer[j]
            yield item
        rng.shuffle(buffer)
        yield from buffer

    def record_bad_name(self, name: str, reason: str) -> None:
        self.bad_files.append((name, reason))
        log.warning("skipping bad sample %s: %s", name, reason)


def shards(split: str = "train", *, urls=None, pattern=None, classes=None, num_classes=None, channels=3,
           on_bad_image="error", max_pixels=DEFAULT_MAX_PIXELS, streaming=None, num_samples=None,
           shuffle_buffer=1000) -> ShardSource:
    """WebDataset-style tar shards; see the module doc."""
    return ShardSource(split, urls=urls, pattern=pattern, classes=classes, num_classes=num_classes,
                       channels=channels, on_bad_image=on_bad_image, max_pixels=max_pixels, streaming=streaming,
                       num_samples=num_samples, shuffle_buffer=shuffle_buffer)


# ---------------------------------------------------------------------------------------------------------
# Streaming batches
# ---------------------------------------------------------------------------------------------------------
class _EpochBatches(torch.utils.data.IterableDataset):
    """One epoch of one rank's batches; in a DataLoader, each worker reads its own shards."""

    def __init__(self, stream: "ShardStream", epoch: int, consumed: int):
        self.s = stream
        self.epoch = epoch
        self.consumed = consumed

    def __iter__(self):
        from vitlab.data.loader import Payload, crop_fn, finish_batch

        s = self.s
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = s.source.shard_order(self.epoch, s.seed, s.train)
        mine = order[s.rank::s.world_size] if s.train else order
        mine = mine[worker::workers]
        # with round-robin workers, worker w made every batch k with k % workers == w before the resume
        skip = len(range(worker, self.consumed, workers))
        rng = np.random.default_rng([s.seed & 0xFFFFFFFF, 0xB0F, self.epoch, s.rank, worker]) if s.train else None
        samples = s.source.iter_samples(mine, rng)
        for k in itertools.count():
            group = list(itertools.islice(samples, s.batch_size))
            if not group or (s.train and len(group) < s.batch_size):
                return
            if k < skip:
                continue
            bad_before = len(s.source.bad_files)
            try:
                draws = T.draw(s.spec, s.seed, self.epoch, k, s.batch_size, extra=(s.rank, worker)) if s.train else None
                images, labels = [], []
                for j, (name, data, label) in enumerate(group):
                    images.append(load_image(data, channels=s.source.channels, size=s.img_size,
                                             crop=crop_fn(draws, j, s.spec), name=name,
                                             max_pixels=s.source.max_pixels))
                    labels.append(label)
                x = torch.stack(images).float()
                y = torch.as_tensor(labels, dtype=torch.int64)
                x, y = finish_batch(x, y, draws, s.spec, s.in_chans, s.source.num_classes)
                yield Payload(x, y, list(s.source.bad_files[bad_before:]))
            except BadImage as error:
                if s.source.on_bad_image == "error":
                    yield Payload(None, None, [], str(error))
                    return
                # skip: this batch is dropped (streams have no stand-in sample to take its place)
                s.source.record_bad_name(error.name, error.reason)
                yield Payload(None, None, list(s.source.bad_files[bad_before:]))
            except DataError as error:
                yield Payload(None, None, [], str(error))
                return


class ShardStream:
    """The streaming counterpart of :class:`vitlab.data.BatchStream` (same interface)."""

    def __init__(self, source: ShardSource, *, spec: T.AugmentSpec, img_size: tuple[int, int], in_chans: int,
                 batch_size: int, world_size: int, rank: int, seed: int, train: bool, num_workers: int,
                 device: torch.device, prefetch: int):
        self.source = source
        self.spec = spec
        self.img_size = img_size
        self.in_chans = in_chans
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank if train else 0
        self.seed = seed
        self.train = train
        self.num_workers = num_workers
        self.device = device
        self.prefetch = prefetch
        self.num_classes = source.num_classes
        self.soft_targets = train and spec.soft_targets
        self._epoch = 0
        self._batch = 0

    def __len__(self) -> int:
        """Batches per epoch per rank, estimated from ``num_samples`` (shards may be uneven)."""
        n = self.source.num_samples
        if n is None:
            raise TypeError("streamed shards: batches per epoch unknown; pass num_samples= to get_source")
        return n // (self.batch_size * self.world_size) if self.train else math.ceil(n / self.batch_size)

    @property
    def bad_files(self):
        return self.source.bad_files

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict) -> None:
        try:
            self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"stream state must be {{'epoch': int, 'batch': int}}, got {state!r}") from None

    def _epoch_payloads(self, epoch: int, consumed: int):
        from vitlab.data.loader import _threaded, _worker_init

        dataset = _EpochBatches(self, epoch, consumed)
        if self.num_workers > 0:
            return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                                    prefetch_factor=max(self.prefetch, 1),
                                                    worker_init_fn=_worker_init,
                                                    pin_memory=self.device.type == "cuda"))
        if self.prefetch > 0:
            return _threaded(lambda p: p, iter(dataset), self.prefetch)
        return iter(dataset)

    def __iter__(self):
        while True:
            got = 0
            for payload in self._epoch_payloads(self._epoch, self._batch):
                if payload.bad_files:
                    self.source.merge_bad_files(payload.bad_files)
                if payload.error is not None:
                    raise DataError(payload.error)
                if self.train:
                    self._batch += 1  # a batch dropped for a bad image still counts, so resume stays aligned
                if payload.images is None:
                    continue
                got += 1
                yield payload.images.to(self.device, non_blocking=True), payload.targets.to(self.device)
            if not self.train:
                return
            if got == 0 and self._batch == 0:
                raise DataError(f"{self.source.name}: an epoch produced no batch of {self.batch_size} on rank "
                                f"{self.rank}; use more shards or a smaller batch")
            self._epoch, self._batch = self._epoch + 1, 0


def build_shard_stream(source: ShardSource, *, batch_size: int, train: bool, img_size, in_chans, augment: str,
                       seed: int, rank: int, world_size: int, num_workers: int, device, prefetch: int) -> ShardStream:
    from vitlab.data.loader import _pair

    if batch_size <= 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"batch_size={batch_size}, rank={rank}, world_size={world_size} are not valid")
    if train and len(source.urls) < world_size * max(num_workers, 1):
        log.warning("%d shards for %d ranks x %d workers: some readers get none", len(source.urls), world_size,
                    max(num_workers, 1))
    return ShardStream(source, spec=T.get_augment(augment), img_size=_pair(img_size),
                       in_chans=source.channels if in_chans is None else int(in_chans), batch_size=batch_size,
                       world_size=world_size, rank=rank, seed=seed, train=train, num_workers=num_workers,
                       device=torch.device(device), prefetch=prefetch)
