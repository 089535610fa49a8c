"""Sharded tar datasets in the WebDataset layout, read locally or streamed, split by rank and worker.

A shard is a plain tar file; a sample is the group of consecutive members sharing a key (the path up to
the first dot of the file name): ``n01440764_10026.jpg`` + ``n01440764_10026.cls`` (the label as decimal
text). Shards are named by a list (``urls=``), a brace pattern (``pattern="data/train-{000000..000127}.tar"``), a glob
or a directory (its ``*.tar``); entries may be local paths, ``file://``, ``http(s)://`` URLs or ``pipe:<command>``
(e.g. ``pipe:aws s3 cp s3://bucket/shard-0001.tar -``), so data that fits no single disk can be streamed. A
``pipe:`` URL runs a shell command, so it needs ``allow_pipe=True`` (``data.options.allow_pipe=true``).

Two ways to read them:

* **indexed** (default for local shards): the tar headers are scanned once (no image is decoded) and every
  sample becomes addressable, so the stream keeps the full ordering contract of
  :func:`vitlab.data.build_stream` (global permutation, rank slices, exact resume, ``indices=``);
* **streaming** (``streaming=True``, the default when any shard is remote): each epoch shuffles the shard
  order from ``(seed, epoch)``; rank ``r`` of ``W`` reads shards ``r, r+W, ...`` and reader ``w`` of a rank's
  ``L = max(N, 1)`` readers (``N`` worker processes) every L-th of those; samples pass through a seeded shuffle
  buffer. Use at least ``W x L`` shards. Each reader goes on to the next epoch on its own when its shards run
  dry, and the stream's state holds every reader's position, so resume is exact in every case (readers or ranks
  at different points, uneven shard counts); it skips the consumed batches without decoding them.
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
from vitlab.data.batching import Payload, crop_fn, finish_batch, pair, worker_loader
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


def open_shard(url: str, *, allow_pipe: bool = False):
    """A readable binary stream for a shard (local path, file://, http(s)://, or pipe:command).

    A ``pipe:`` URL runs its command in a shell, so it is refused unless the user opted in (``allow_pipe``):
    a config or a shard list from elsewhere must not be able to run commands on this machine.
    """
    if url.startswith("pipe:") and not allow_pipe:
        raise ConfigError(f"shard {url!r} runs a shell command; set data.options.allow_pipe=true to allow pipe: URLs")
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


def expand_shards(entries: Sequence[str]) -> list[str]:
    """Shard URLs from entries that may be brace patterns, globs or local directories (their ``*.tar``, sorted)."""
    urls = []
    for entry in entries:
        for url in expand_pattern(entry) if "{" in entry or not entry.startswith(_REMOTE) else [entry]:
            path = os.path.expanduser(url[7:] if url.startswith("file://") else url)
            if not url.startswith(_REMOTE) and os.path.isdir(path):
                found = sorted(glob.glob(os.path.join(path, "*.tar")))
                if not found:
                    raise DataError(f"shard directory {url} holds no .tar files")
                urls += found
            else:
                urls.append(url)
    return urls


def _split_key(name: str) -> tuple[str, str]:
    directory, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (f"{directory}/{key}" if directory else key), ext.lower()


def iter_records(url: str, *, allow_pipe: bool = False) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for every sample of one shard, reading it as a stream."""
    stream = open_shard(url, allow_pipe=allow_pipe)
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
                 num_samples: int | None = None, shuffle_buffer: int = 1000, allow_pipe: bool = False):
        if (urls is None) == (pattern is None):
            raise ConfigError("shards: give exactly one of urls=[...] or pattern='...{000..009}.tar'")
        shard_list = expand_shards([urls] if isinstance(urls, str) else list(urls or []) if pattern is None
                                   else [pattern])
        if not shard_list:
            raise ConfigError("shards: the shard list is empty")
        piped = [u for u in shard_list if u.startswith("pipe:")]
        if piped and not allow_pipe:
            raise ConfigError(f"shard {piped[0]!r} runs a shell command; set data.options.allow_pipe=true to allow "
                              "pipe: URLs")
        self.allow_pipe = bool(allow_pipe)
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
                for key, parts in iter_records(url, allow_pipe=self.allow_pipe):
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
           shuffle_buffer=1000, allow_pipe=False) -> ShardSource:
    """WebDataset-style tar shards; see the module doc."""
    return ShardSource(split, urls=urls, pattern=pattern, classes=classes, num_classes=num_classes,
                       channels=channels, on_bad_image=on_bad_image, max_pixels=max_pixels, streaming=streaming,
                       num_samples=num_samples, shuffle_buffer=shuffle_buffer, allow_pipe=allow_pipe)


# ---------------------------------------------------------------------------------------------------------
# Streaming batches
# ---------------------------------------------------------------------------------------------------------
class _Readers(torch.utils.data.IterableDataset):
    """A rank's shard readers, each making whole batches from its own shards.

    Training: reader ``w`` of ``L`` reads, in epoch ``e``, every L-th of the rank's shards of that epoch's shard
    order, and goes on to epoch ``e + 1`` when they run dry, forever; it starts at ``positions[w] = (epoch,
    batch)``, skipping the batches before it without decoding them. Evaluation: one pass over every shard.
    In a DataLoader the worker processes are the readers; worker ``p`` plays reader ``(p + first) % L``, so that
    the DataLoader's round robin (worker 0 first) delivers reader ``first``'s batch first.
    """

    def __init__(self, stream: "ShardStream", positions: list[tuple[int, int]], first: int):
        self.s = stream
        self.positions = positions
        self.first = first

    def __iter__(self) -> Iterator[Payload]:
        info = torch.utils.data.get_worker_info()
        readers = len(self.positions)
        reader = ((info.id if info is not None else 0) + self.first) % readers
        if not self.s.train:
            yield from self._batches(self.s.source.urls[reader::readers], 0, reader, 0)
            return
        epoch, skip = self.positions[reader]
        while True:
            mine = self.s.source.shard_order(epoch, self.s.seed, True)[self.s.rank::self.s.world_size][reader::readers]
            made = 0
            for payload in self._batches(mine, epoch, reader, skip):
                made += 1
                yield payload
                if payload.error is not None:
                    return
            if made == 0 and skip == 0:
                yield Payload(None, None, error=f"{self.s.source.name}: reader {reader} of rank {self.s.rank} made no "
                              f"batch of {self.s.batch_size} in epoch {epoch} ({len(mine)} shards); use more shards, "
                              "fewer data.num_workers or a smaller batch")
                return
            epoch, skip = epoch + 1, 0

    def _batches(self, urls: list[str], epoch: int, reader: int, skip: int) -> Iterator[Payload]:
        s = self.s
        rng = np.random.default_rng([s.seed & 0xFFFFFFFF, 0xB0F, epoch, s.rank, reader]) if s.train else None
        samples = s.source.iter_samples(urls, rng)
        try:
            for k in itertools.count():
                group = list(itertools.islice(samples, s.batch_size))
                if not group or (s.train and len(group) < s.batch_size):
                    return
                if k >= skip:
                    yield self._make(group, epoch, k, reader)
        except DataError as error:  # BadImage (policy "error") included: one line, carried as text
            yield Payload(None, None, error=str(error))

    def _make(self, group: list, epoch: int, k: int, reader: int) -> Payload:
        """One batch; an unreadable image drops the whole training batch (a stream has no stand-in sample to
        take its place) and only itself from an evaluation batch."""
        s = self.s
        bad_before = len(s.source.bad_files)
        draws = T.draw(s.spec, s.seed, epoch, k, s.batch_size, extra=(s.rank, reader)) if s.train else None
        images, labels = [], []
        for j, (name, data, label) in enumerate(group):
            try:
                images.append(load_image(data, channels=s.source.channels, size=s.img_size,
                                         crop=crop_fn(draws, j, s.spec), name=name, max_pixels=s.source.max_pixels))
                labels.append(label)
            except BadImage as error:
                if s.source.on_bad_image == "error":
                    raise
                s.source.record_bad_name(error.name, error.reason)
                if s.train:
                    return Payload(None, None, list(s.source.bad_files[bad_before:]), key=(reader, epoch, k))
        bad = list(s.source.bad_files[bad_before:])
        if not images:
            return Payload(None, None, bad, dropped=len(group), key=(reader, epoch, k))
        x, y = finish_batch(torch.stack(images).float(), torch.as_tensor(labels, dtype=torch.int64), draws, s.spec,
                            s.in_chans, s.source.num_classes)
        return Payload(x, y, bad, dropped=len(group) - len(images), key=(reader, epoch, k))


class ShardStream:
    """The streaming counterpart of :class:`vitlab.data.BatchStream` (the same :class:`vitlab.data.stream.Stream`).

    Its state is every reader's position (epoch, next batch) and which reader delivers next, so a resume is exact
    wherever the readers are, also when some have run dry and gone on to the next epoch before others.
    """

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
        self.readers = max(num_workers, 1)
        self._positions = [(0, 0)] * self.readers  # (epoch, next batch) of each reader
        self._next = 0  # the reader whose batch comes next
        self._delivered = 0
        self._dropped = 0
        self._eval_loader: torch.utils.data.DataLoader | None = None  # persistent workers between passes

    def __len__(self) -> int:
        """Batches per epoch per rank, estimated from ``num_samples`` (shards may be uneven)."""
        n = self.source.num_samples
        if n is None:
            raise TypeError("streamed shards: batches per epoch unknown; pass num_samples= to get_source")
        return n // (self.batch_size * self.world_size) if self.train else math.ceil(n / self.batch_size)

    @property
    def bad_files(self):
        return self.source.bad_files

    @property
    def dropped(self) -> int:
        return self._dropped

    def state_dict(self) -> dict:
        return {"epoch": min(e for e, _ in self._positions), "batch": self._delivered,
                "readers": [list(p) for p in self._positions], "next": self._next,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
            positions = [(int(e), int(k)) for e, k in state.get("readers", [])]
            first = int(state.get("next", 0))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"stream state must hold 'epoch', 'batch' and 'readers', got {state!r}") from None
        if not positions:  # written before readers were saved: every reader was still in `epoch`
            positions = [(epoch, len(range(w, batch, self.readers))) for w in range(self.readers)]
            first = batch % self.readers
        if len(positions) != self.readers:
            raise ConfigError(f"the shard stream was saved with {len(positions)} reader(s) and resumes with "
                              f"{self.readers}; resume with data.num_workers={len(positions)}")
        for key, now in (("batch_size", self.batch_size), ("world_size", self.world_size)):
            if state.get(key, now) != now:
                raise ConfigError(f"the shard stream was saved with {key}={state[key]}; it resumes exactly only "
                                  f"with the same value (now {now})")
        self._positions, self._next, self._delivered = positions, first, batch

    def _payloads(self) -> Iterator[Payload]:
        if not self.train:
            readers = _Readers(self, [(0, 0)] * self.readers, 0)
            if self.num_workers == 0:
                return iter(readers)
            if self._eval_loader is None:
                self._eval_loader = worker_loader(readers, num_workers=self.num_workers, prefetch=self.prefetch,
                                                  device=self.device)
            return iter(self._eval_loader)
        readers = _Readers(self, list(self._positions), self._next)
        if self.num_workers == 0:
            return iter(readers)
        # the readers start from this iteration's positions, so the workers are made for it (not persistent)
        return iter(worker_loader(readers, num_workers=self.num_workers, prefetch=self.prefetch, device=self.device,
                                  persistent=False))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._dropped = 0
        for payload in self._payloads():
            if payload.bad_files:
                self.source.merge_bad_files(payload.bad_files)
            if payload.error is not None:
                raise DataError(payload.error)
            self._dropped += payload.dropped
            if self.train:  # a batch dropped for a bad image still moves its reader on, so resume stays aligned
                reader, epoch, k = payload.key
                self._positions[reader] = (epoch, k + 1)
                self._next = (reader + 1) % self.readers
                self._delivered += 1
            if payload.images is None:
                continue
            yield payload.images.to(self.device, non_blocking=True), payload.targets.to(self.device)


def build_shard_stream(source: ShardSource, *, batch_size: int, train: bool, img_size, in_chans, augment: str,
                       seed: int, rank: int, world_size: int, num_workers: int, device, prefetch: int) -> ShardStream:
    readers = max(num_workers, 1)
    if train and len(source.urls) // world_size < readers:
        raise ConfigError(f"{len(source.urls)} shards for {world_size} rank(s) x {readers} reader(s) "
                          f"(data.num_workers): every reader needs a shard; use more shards or fewer workers")
    return ShardStream(source, spec=T.get_augment(augment), img_size=pair(img_size),
                       in_chans=source.channels if in_chans is None else int(in_chans), batch_size=batch_size,
                       world_size=world_size, rank=rank, seed=seed, train=train, num_workers=num_workers,
                       device=torch.device(device), prefetch=prefetch)
