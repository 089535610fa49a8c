"""What every data source looks like, and the in-memory kind that small benchmark sets use.

A source is an indexable set of ``(image uint8 [C, H, W], label int)`` pairs with class names. Sources do
no augmentation and no batching: :func:`vitlab.data.build_stream` does that, and it treats two kinds
differently:

* in-memory sources (:class:`TensorSource`: Fashion-MNIST, digits, CIFAR, synthetic) hold every image in
  one ``uint8 [N, C, H, W]`` tensor, so a batch is a single gather followed by tensor ops;
* file sources (:class:`FileSource`: image folders, manifests, Pets, Flowers-102) decode one file per
  sample, cropping and resizing while decoding, in worker processes.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from vitlab.data.images import DEFAULT_MAX_PIXELS, BadImage, CropFn, load_image, open_image
from vitlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")


class Source:
    """Base of all sources: ``len``, ``source[i] -> (image, label)``, ``classes``, ``bad_files``."""

    name: str = "source"
    in_memory: bool = False
    classes: list[str]
    bad_files: list[tuple[str, str]]
    channels: int

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, classes={self.num_classes})"


class TensorSource(Source):
    """A source held as one uint8 tensor; augmentation runs on whole batches of it."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | np.ndarray | Sequence[int],
                 classes: Sequence[str], *, name: str = "tensor"):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"{name}: images must be a uint8 tensor [N, C, H, W], got {images.dtype} "
                            f"{list(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise DataError(f"{name}: labels span {int(labels.min())}..{int(labels.max())}, expected "
                            f"0..{len(classes) - 1} for {len(classes)} classes")
        self.images = images.contiguous()  # [N, C, H, W] uint8
        self.labels = labels                # [N] int64
        self.classes = list(classes)
        self.bad_files = []
        self.channels = int(images.shape[1])
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class FileSource(Source):
    """A source of image files decoded on demand; bad files raise or are skipped (``on_bad_image``).

    Subclasses fill ``self.paths`` (list of str), ``self.labels`` (int64 tensor) and ``self.classes``.
    With ``on_bad_image="skip"`` a file that fails to decode is recorded in ``bad_files``. In training the next
    good sample stands in for it, so a batch keeps its size and an epoch its length; the substitution is
    deterministic, so a resumed run sees the same batches. Evaluation asks ``load(..., substitute=False)`` and
    leaves the image out, so no image is scored twice.
    """

    def __init__(self, *, name: str, channels: int = 3, on_bad_image: str = "error",
                 max_pixels: int = DEFAULT_MAX_PIXELS, background: int = 255):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"on_bad_image={on_bad_image!r}; expected one of {BAD_IMAGE_POLICIES}")
        if channels not in (1, 3):
            raise ConfigError(f"channels={channels}; expected 1 or 3")
        self.name = name
        self.channels = channels
        self.on_bad_image = on_bad_image
        self.max_pixels = int(max_pixels)
        self.background = int(background)
        self.bad_files: list[tuple[str, str]] = []
        self._bad_index: set[int] = set()
        self.paths: list[str] = []
        self.labels = torch.zeros(0, dtype=torch.int64)
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index)

    def load(self, index: int, *, size: tuple[int, int] | None = None, crop: CropFn | None = None,
             substitute: bool = True) -> tuple[torch.Tensor, int] | None:
        """Decode sample ``index`` (cropped/resized when asked). With ``on_bad_image="skip"`` a bad image is
        recorded and, when ``substitute``, the next good one stands in (training); otherwise None (evaluation)."""
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        index %= n
        for attempt in range(n if substitute else 1):
            i = (index + attempt) % n
            if i in self._bad_index:
                continue
            try:
                image = load_image(self.image_input(i), channels=self.channels, size=size, crop=crop,
                                   name=self.paths[i], max_pixels=self.max_pixels, background=self.background)
                return image, int(self.labels[i])
            except BadImage as error:
                if self.on_bad_image == "error":
                    raise
                self.record_bad(i, error.reason)
        if not substitute:
            return None
        raise DataError(f"{self.name}: every one of its {n} images is unreadable (on_bad_image='skip')")

    def image_input(self, index: int) -> str | bytes:
        """What the decoder reads for sample ``index``: a path here; bytes for sources inside archives."""
        return self.paths[index]

    def record_bad(self, index: int, reason: str) -> None:
        if index not in self._bad_index:
            self._bad_index.add(index)
            self.bad_files.append((self.paths[index], reason))
            log.warning("skipping bad image %s: %s", self.paths[index], reason)

    def merge_bad_files(self, entries: Sequence[tuple[str, str]]) -> None:
        """Adopt bad files found in a worker process (their copy of the source is not this one)."""
        known = {path for path, _ in self.bad_files}
        lookup = None
        for path, reason in entries:
            if path in known:
                continue
            if lookup is None:
                lookup = {p: i for i, p in enumerate(self.paths)}
            known.add(path)
            if path in lookup:
                self._bad_index.add(lookup[path])
            self.bad_files.append((path, reason))

    def verify(self, level: str) -> None:
        """Check every file up front: ``header`` (open only, cheap) or ``full`` (decode every image).

        Bad files raise (naming the file) or, with skip, are dropped from the source before any index is
        handed out, so they never need a stand-in.
        """
        if level == "none":
            return
        if level not in ("header", "full"):
            raise ConfigError(f"verify={level!r}; expected 'none', 'header' or 'full'")
        keep: list[int] = []
        for i, path in enumerate(self.paths):
            try:
                if level == "full":
                    load_image(self.image_input(i), name=path, channels=self.channels, max_pixels=self.max_pixels)
                else:
                    open_image(self.image_input(i), name=path, max_pixels=self.max_pixels).close()
                keep.append(i)
            except BadImage as error:
                if self.on_bad_image == "error":
                    raise
                self.bad_files.append((path, error.reason))
                log.warning("skipping bad image %s: %s", path, error.reason)
        if len(keep) != len(self.paths):
            self.keep_only(keep)

    def keep_only(self, keep: list[int]) -> None:
        """Drop every sample not in ``keep`` (subclasses with per-sample records extend this)."""
        self.paths = [self.paths[i] for i in keep]
        self.labels = self.labels[torch.as_tensor(keep, dtype=torch.int64)]
