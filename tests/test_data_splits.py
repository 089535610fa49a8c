"""Dev splits, k-shot subsets and nested subsets: deterministic, stratified, nested."""
from __future__ import annotations

import numpy as np
import pytest

from vitlab.data import get_source
from vitlab.data.splits import DEV_FRACTIONS, dev_split, few_shot_indices, nested_subsets, stratified_split
from vitlab.errors import ConfigError, DataError

LABELS = np.repeat(np.arange(10), [100, 90, 80, 70, 60, 50, 40, 30, 20, 10])  # 550, unbalanced


def test_paper_dev_fractions():
    assert DEV_FRACTIONS["cifar10"] == 0.02 and DEV_FRACTIONS["cifar100"] == 0.02
    assert DEV_FRACTIONS["pets"] == 0.10 and DEV_FRACTIONS["flowers102"] == 0.10
    assert DEV_FRACTIONS["imagenet"] == 0.01


def test_dev_split_is_stratified_disjoint_and_deterministic():
    train, dev = dev_split(LABELS, 0.1, seed=3)
    assert len(dev) == 55 and len(train) == 495
    assert not set(train) & set(dev) and sorted(set(train) | set(dev)) == list(range(550))
    counts = np.bincount(LABELS[dev], minlength=10)
    expected = np.bincount(LABELS) * 0.1
    assert np.all(np.abs(counts - expected) <= 1)
    again = dev_split(LABELS, 0.1, seed=3)
    assert np.array_equal(again[1], dev)
    assert not np.array_equal(dev_split(LABELS, 0.1, seed=4)[1], dev)


def test_dev_split_accepts_a_source():
    source = get_source("synthetic", num_samples=200, num_classes=4, img_size=4, seed=0)
    train, dev = dev_split(source, DEV_FRACTIONS["cifar10"], seed=0)
    assert len(dev) == 4 and len(train) == 196


def test_digits_split_is_the_documented_one():
    train, test = get_source("digits", split="train"), get_source("digits", split="test")
    assert len(train) == 1297 and len(test) == 500
    everything = get_source("digits", split="all")
    expected = np.bincount(everything.labels.numpy()) * 500 / 1797  # stratified: proportional per class
    assert np.abs(np.bincount(test.labels.numpy()) - expected).max() < 1
    assert int(train.images.max()) == 255 and train.images.shape[1:] == (1, 8, 8)
    again = get_source("digits", split="test")
    assert np.array_equal(test.images.numpy(), again.images.numpy())


def test_few_shot_is_balanced_and_nested_in_k():
    five = few_shot_indices(LABELS, 5, seed=1)
    one = few_shot_indices(LABELS, 1, seed=1)
    assert len(five) == 50 and np.all(np.bincount(LABELS[five]) == 5)
    assert set(one) <= set(five)
    with pytest.raises(DataError):
        few_shot_indices(LABELS, 11, seed=0)  # the last class has 10
    with pytest.raises(ConfigError):
        few_shot_indices(LABELS, 0)


def test_nested_subsets_are_nested_and_balanced():
    subsets = nested_subsets(LABELS, [55, 110, 275, 550], seed=2)
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) <= set(large)
    assert [len(s) for s in subsets] == [55, 110, 275, 550]
    share = np.bincount(LABELS[subsets[0]], minlength=10) / 55
    assert np.abs(share - np.bincount(LABELS) / 550).max() < 0.03
    plain = nested_subsets(1000, [10, 100], seed=0)
    assert set(plain[0]) <= set(plain[1])
    with pytest.raises(ConfigError):
        nested_subsets(10, [11])


def test_stratified_split_exact_size():
    keep, hold = stratified_split(LABELS, 123, seed=0)
    assert len(hold) == 123 and len(keep) == 427
