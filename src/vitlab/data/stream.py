"""The one stream protocol: what the engine, the evaluators and the tools may expect of a batch stream.

Both kinds of stream satisfy it: :class:`vitlab.data.loader.BatchStream` (in-memory sets, files, indexed shards)
and :class:`vitlab.data.shards.ShardStream` (shards read as a stream). A training stream is endless (epoch after
epoch) and resumes exactly from its :meth:`Stream.state_dict`; an evaluation stream makes one ordered pass per
iteration, scores every readable image once and counts the ones it dropped (:attr:`Stream.dropped`).
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch


@runtime_checkable
class Stream(Protocol):
    """Batches of ``(images float32 [B, C, H, W] in [-1, 1], targets int64 [B] or float32 [B, K])``."""

    batch_size: int
    num_classes: int
    train: bool
    soft_targets: bool  # targets are [B, K] (mixing augmentations)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int:
        """Batches per epoch (training, per rank) or per pass (evaluation)."""
        ...

    @property
    def bad_files(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of every unreadable image met so far."""
        ...

    @property
    def dropped(self) -> int:
        """Images an evaluation pass left out because they could not be read (0 for training streams)."""
        ...

    def state_dict(self) -> dict:
        """The data position, enough to resume the same sequence of batches exactly."""
        ...

    def load_state_dict(self, state: dict) -> None: ...
