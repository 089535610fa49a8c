"""Data: sources, the paper's preprocessing, batch streams, splits and de-duplication.

    from vitlab.data import get_source, build_stream
    source = get_source("fashion_mnist", split="train")
    stream = build_stream(source, batch_size=128, train=True, img_size=32, augment="paper", seed=0)
    for images, targets in stream:   # images float32 [B, C, 32, 32] in [-1, 1]
        ...

See ``docs/data.md`` for every source, the augmentation levels, the ordering contract and de-dup.
"""
from __future__ import annotations

from vitlab.data.base import FileSource, Source, TensorSource
from vitlab.data.dedup import load_exclusions
from vitlab.data.loader import BatchStream, build_stream
from vitlab.data.registry import get_source, list_sources
from vitlab.data import sources, subset  # noqa: F401  (register the named sources)
from vitlab.data.stream import Stream
from vitlab.data.transforms import AUGMENT_LEVELS, AugmentSpec

__all__ = [
    "get_source", "list_sources", "build_stream", "BatchStream", "Stream", "Source", "TensorSource", "FileSource",
    "AUGMENT_LEVELS", "AugmentSpec", "load_exclusions",
]
