"""A fixed, class-balanced subset of another source's training split: VTAB's "1k" training sets.

VTAB-1k (and the paper's Section 4.2) fine-tunes on 1,000 training examples per task. Any source becomes such a
task with ``get_source("subset", split, source="fashion_mnist", size=1000)``: the ``train`` split (or whichever
``subset_splits`` name) keeps ``size`` examples chosen by :func:`vitlab.data.splits.nested_subsets` (class
proportions kept, deterministic from ``seed``, each smaller subset inside every larger one); other splits (the
test set) pass through whole, or capped at ``cap`` examples the same way when a quick run asks for it.

Because it is a named source, a run config can say ``data.dataset=subset data.options.source=digits
data.options.size=1000`` and the training engine, the few-shot evaluator and the suite all see the same images.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from vitlab.data.base import FileSource, Source, TensorSource
from vitlab.data.registry import get_source, register
from vitlab.data.splits import nested_subsets
from vitlab.errors import ConfigError


def take(source: Source, indices: Sequence[int], name: str) -> Source:
    """The examples ``indices`` of ``source`` as a source of the same kind (in-memory stays in memory)."""
    index = torch.as_tensor(list(indices), dtype=torch.int64)
    if isinstance(source, TensorSource):
        return TensorSource(source.images.index_select(0, index), source.labels.index_select(0, index),
                            source.classes, name=name)
    if isinstance(source, FileSource):
        picked = copy.copy(source)  # shares the decoding settings; gets its own lists
        picked.paths = [source.paths[i] for i in index.tolist()]
        picked.labels = source.labels.index_select(0, index)
        picked.bad_files, picked._bad_index = [], set()
        picked.name = name
        return picked
    raise ConfigError(f"subset: source {getattr(source, 'name', source)!r} cannot be indexed (streaming shards); "
                      "use an in-memory or file source")


def subset(split: str = "train", *, source: str, size: int = 1000, seed: int = 0,
           options: dict[str, Any] | None = None, subset_splits: Sequence[str] = ("train",),
           cap: int | None = None) -> Source:
    """``size`` examples of ``source``'s ``split`` when it is one of ``subset_splits``; otherwise the whole split
    (at most ``cap`` examples). ``options`` are passed to the underlying source."""
    if source == "subset":
        raise ConfigError("subset: source='subset' would wrap itself; name a real source")
    base = get_source(source, split=split, **(options or {}))
    limit = int(size) if split in subset_splits else (None if cap is None else int(cap))
    if limit is None or limit >= len(base):
        return base
    if limit < 1:
        raise ConfigError(f"subset: size={limit} is invalid; expected a positive integer")
    labels = getattr(base, "labels", None)
    if labels is None:
        raise ConfigError(f"subset: source {source!r} has no labels array to draw a balanced subset from")
    (indices,) = nested_subsets(labels, [limit], seed=seed)
    return take(base, indices.tolist(), name=f"{source}:{split}[{limit}]")


register("subset", subset)
