"""Sprite tasks (the suite's "structured" group) and the VTAB-style `subset` source.

Each sprite label is checked against the pixels it describes: the centroid's bin for position, the number of
connected blobs for count, the direction from the centroid to the apex for orientation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from vitlab.data import get_source
from vitlab.data.sprites import position_bins
from vitlab.errors import ConfigError


@pytest.mark.parametrize("task, classes", [("sprites_position", 8), ("sprites_count", 6),
                                           ("sprites_orientation", 8)])
def test_sprite_sources_are_deterministic_in_memory_and_balanced(task: str, classes: int) -> None:
    source = get_source(task, split="train", num_examples=400)
    assert source.in_memory and source.images.dtype == torch.uint8
    assert tuple(source.images.shape) == (400, 1, 32, 32) and source.num_classes == classes
    counts = torch.bincount(source.labels, minlength=classes)
    assert counts.min() > 400 / classes / 2  # every class present, roughly balanced
    again = get_source(task, split="train", num_examples=100)
    assert torch.equal(again.images, source.images[:100])  # example i does not depend on how many were asked
    other = get_source(task, split="test", num_examples=100)
    assert not torch.equal(other.images, source.images[:100])
    assert not torch.equal(get_source(task, num_examples=20, seed=1).images, source.images[:20])
    rgb = get_source(task, num_examples=5, channels=3)
    assert rgb.images.shape[1] == 3 and torch.equal(rgb.images[:, 0], source.images[:5, 0])


def _centroid(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(image.shape)
    weight = image.astype(np.float64)
    return (xs * weight).sum() / weight.sum() + 0.5, (ys * weight).sum() / weight.sum() + 0.5


def test_position_labels_follow_the_centroid() -> None:
    source = get_source("sprites_position", num_examples=300)
    edges = position_bins(32, 8)
    agree = 0
    for image, label in zip(source.images[:, 0].numpy(), source.labels.tolist()):
        cx, _ = _centroid(image)
        agree += int(np.clip(np.searchsorted(edges, cx) - 1, 0, 7) == label)
    assert agree / 300 >= 0.98


def test_count_labels_are_the_number_of_blobs() -> None:
    source = get_source("sprites_count", num_examples=300)
    agree = 0
    for image, label in zip(source.images[:, 0].numpy(), source.labels.tolist()):
        _, blobs = ndimage.label(image > 64)
        agree += int(blobs == label + 1)
    assert agree / 300 >= 0.97


def test_orientation_labels_point_from_centroid_to_apex() -> None:
    source = get_source("sprites_orientation", num_examples=300)
    agree = 0
    for image, label in zip(source.images[:, 0].numpy(), source.labels.tolist()):
        cx, cy = _centroid(image)
        ys, xs = np.nonzero(image > 100)
        far = np.argmax((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2)
        angle = math.atan2(ys[far] + 0.5 - cy, xs[far] + 0.5 - cx) % (2 * math.pi)
        agree += int(int(angle // (2 * math.pi / 8)) % 8 == label)
    assert agree / 300 >= 0.95


def test_sprite_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        get_source("sprites_count", bins=3)
    with pytest.raises(ConfigError, match="split"):
        get_source("sprites_position", split="dev")
    with pytest.raises(ConfigError, match="too small"):
        get_source("sprites_position", size=8)
    assert get_source("sprites_position", num_examples=30, bins=3).num_classes == 3


def test_subset_source_is_a_fixed_balanced_train_subset() -> None:
    full = get_source("digits", "train")
    sub = get_source("subset", "train", source="digits", size=200)
    assert len(sub) == 200 and sub.in_memory and sub.classes == full.classes
    assert torch.bincount(sub.labels, minlength=10).min() >= 19  # class proportions kept
    # the images are examples of the full split, with their labels
    rows = {bytes(img.numpy().tobytes()): int(lbl) for img, lbl in zip(full.images, full.labels)}
    assert all(rows[bytes(img.numpy().tobytes())] == int(lbl) for img, lbl in zip(sub.images, sub.labels))
    again = get_source("subset", "train", source="digits", size=200)
    assert torch.equal(again.images, sub.images)
    smaller = get_source("subset", "train", source="digits", size=100)
    small_rows = {bytes(img.numpy().tobytes()) for img in smaller.images}
    assert small_rows <= {bytes(img.numpy().tobytes()) for img in sub.images}  # nested
    assert len(get_source("subset", "test", source="digits", size=200)) == len(get_source("digits", "test"))
    assert len(get_source("subset", "test", source="digits", size=200, cap=50)) == 50
    assert len(get_source("subset", "train", source="sprites_count", size=40,
                          options={"num_examples": 60})) == 40
    with pytest.raises(ConfigError):
        get_source("subset", "train", source="subset", size=10)
