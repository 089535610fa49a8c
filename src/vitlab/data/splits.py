"""Deterministic index splits: held-out dev sets, k-shot subsets, nested subsets for the data-size study.

All functions return sorted ``int64`` numpy index arrays into the source (or label array) they were given,
and depend only on their arguments: the same seed gives the same split on every machine. Pass the result
as ``indices=`` to :func:`vitlab.data.build_stream`.

Properties the paper's protocols rely on, and the tests check:

* ``dev_split`` is stratified (every class loses the same share, up to rounding) and disjoint;
* ``few_shot_indices(labels, k, seed)`` is nested in k: the 1-shot set is inside the 5-shot set;
* ``nested_subsets`` gives each smaller subset inside every larger one (the paper's 9M < 30M < 90M < 300M
  JFT subsets are drawn this way), class-balanced when labels are given.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vitlab.errors import ConfigError, DataError

# Fraction of the training set held out as a dev (validation) split in the paper (Appendix B.1.1):
# "2% for CIFAR, 10% for Oxford Pets and Flowers, 1% for ImageNet".
DEV_FRACTIONS: dict[str, float] = {
    "cifar10": 0.02,
    "cifar100": 0.02,
    "pets": 0.10,
    "flowers102": 0.10,
    "imagenet": 0.01,
    "imagenet21k": 0.01,
}


def labels_of(source_or_labels) -> np.ndarray:
    """Integer labels of a source (without decoding images) or of an array-like."""
    labels = getattr(source_or_labels, "labels", source_or_labels)
    array = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels)
    if array.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"labels must be integers, got {array.dtype}")
    return array.astype(np.int64)


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, purpose])


def stratified_split(labels, n_holdout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out exactly ``n_holdout`` samples, spread over classes in proportion to their size."""
    labels = labels_of(labels)
    n = len(labels)
    if not 0 < n_holdout < n:
        raise ConfigError(f"cannot hold out {n_holdout} of {n} samples; need 0 < n_holdout < {n}")
    rng = _rng(seed, 1)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_holdout / n)
    quota = np.floor(exact).astype(np.int64)
    # hand out the remaining places by largest remainder, ties broken at random but reproducibly
    remainder = exact - quota
    order = np.lexsort((rng.random(len(classes)), -remainder))
    quota[order[: n_holdout - int(quota.sum())]] += 1
    holdout = []
    for cls, take in zip(classes, quota):
        members = np.nonzero(labels == cls)[0]
        holdout.append(rng.permutation(members)[:take])
    holdout_idx = np.sort(np.concatenate(holdout)).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[holdout_idx] = False
    return np.nonzero(keep)[0].astype(np.int64), holdout_idx


def dev_split(source_or_labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, dev_idx): a stratified ``fraction`` of the training set held out as dev set.

    The paper's fractions are in :data:`DEV_FRACTIONS` (``dev_split(src, DEV_FRACTIONS["cifar10"], 0)``).
    """
    labels = labels_of(source_or_labels)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"dev fraction must be in (0, 1), got {fraction}")
    n_dev = max(1, int(round(fraction * len(labels))))
    return stratified_split(labels, n_dev, seed)


def few_shot_indices(labels, shots: int, seed: int = 0) -> np.ndarray:
    """``shots`` samples of every class; for one seed, the k-shot set contains every smaller-k set."""
    labels = labels_of(labels)
    if shots <= 0:
        raise ConfigError(f"shots must be positive, got {shots}")
    rng = _rng(seed, 2)
    chosen = []
    for cls in np.unique(labels):
        members = np.nonzero(labels == cls)[0]
        if len(members) < shots:
            raise DataError(f"class {int(cls)} has only {len(members)} samples, fewer than shots={shots}")
        chosen.append(rng.permutation(members)[:shots])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def nested_subsets(n_or_labels, sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """One index array per size, each smaller one inside every larger one (prefixes of one ordering).

    With labels, the ordering interleaves classes so that every prefix keeps the class proportions (up to
    one sample per class); with an integer ``n`` it is a plain random permutation.
    """
    rng = _rng(seed, 3)
    if isinstance(n_or_labels, (int, np.integer)):
        n = int(n_or_labels)
        order = rng.permutation(n)
    else:
        labels = labels_of(n_or_labels)
        n = len(labels)
        key = np.empty(n, dtype=np.float64)
        for cls in np.unique(labels):
            members = rng.permutation(np.nonzero(labels == cls)[0])
            # the j-th member of a class of size c sits at (j + 1/2) / c of the way through the ordering
            key[members] = (np.arange(len(members)) + 0.5) / len(members)
        order = np.lexsort((rng.random(n), key))
    out = []
    for size in sizes:
        if not 0 < int(size) <= n:
            raise ConfigError(f"subset size {size} must be between 1 and {n}")
        out.append(np.sort(order[: int(size)]).astype(np.int64))
    return out
