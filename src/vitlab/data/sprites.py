"""Procedurally generated "structured" tasks: where a sprite is, how many there are, which way one points.

VTAB groups its tasks into natural, specialised and structured; the structured ones (dSprites location and
orientation, CLEVR counting, ...) ask about geometry rather than texture, which is where a pre-trained
representation helps least. The real sets are large downloads, so vitlab draws small stand-ins of its own:

* ``sprites_position``: one sprite (square, ellipse or triangle) of random size and rotation; the label is
  its horizontal position, in ``bins`` equal bins (:func:`position_bins`; dSprites ``label_x_position``);
* ``sprites_count``: 1 to ``max_count`` non-overlapping sprites; the label is how many (CLEVR ``count``);
* ``sprites_orientation``: one asymmetric "arrow" triangle at a random place; the label is its direction,
  in ``bins`` equal bins of the full turn (dSprites ``label_orientation``).

Every example ``i`` of a split comes from its own random generator seeded with ``(seed, task, split, i)``,
so a set is identical on every machine, and the first ``n`` examples do not depend on how many were asked
for. Images are grey (1 channel, like Fashion-MNIST), anti-aliased by 4x supersampling, held in memory as
``uint8 [N, 1, size, size]``.

Use: ``get_source("sprites_count", split="train", num_examples=1000)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from vitlab.data.base import TensorSource
from vitlab.errors import ConfigError

SPLITS = {"train": 0, "test": 1, "val": 2}
DEFAULT_SIZES = {"train": 5000, "test": 1000, "val": 1000}
KINDS = ("square", "ellipse", "triangle")
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Sprite:
    kind: str
    cx: float  # centre, in pixels
    cy: float
    radius: float  # half the extent along the sprite's main axis, in pixels
    angle: float  # radians
    intensity: float  # 0..255


def _samples(start: int, stop: int) -> np.ndarray:
    """Sample coordinates of pixels ``start..stop-1``, ``SUPERSAMPLE`` per pixel (pixel centres at i + 0.5)."""
    return start + (np.arange((stop - start) * SUPERSAMPLE) + 0.5) / SUPERSAMPLE


def _coverage(sprite: Sprite, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of the sample points inside ``sprite`` (rotated by its angle about its centre)."""
    dx, dy = xs - sprite.cx, ys - sprite.cy
    c, s = math.cos(sprite.angle), math.sin(sprite.angle)
    u = (c * dx + s * dy) / sprite.radius  # along the sprite's main axis
    v = (-s * dx + c * dy) / sprite.radius
    if sprite.kind == "square":  # half-side 0.7: the corners stay within the radius
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7
    if sprite.kind == "ellipse":
        return u**2 + (v / 0.6) ** 2 <= 1.0
    if sprite.kind == "triangle":  # apex at u = 1, base at u = -0.5, half-width 0.65 at the base
        return (u >= -0.5) & (u <= 1.0) & (np.abs(v) <= 0.65 * (1.0 - u) / 1.5)
    raise ValueError(sprite.kind)


def render(sprites: list[Sprite], size: int) -> np.ndarray:
    """A ``uint8 [size, size]`` image: a black background with the sprites, anti-aliased.

    Each sprite is rasterised only inside its bounding box (a sprite lies within ``radius`` of its centre).
    """
    canvas = np.zeros((size, size), dtype=np.float64)
    for sprite in sprites:
        x0, x1 = max(int(sprite.cx - sprite.radius) - 1, 0), min(int(sprite.cx + sprite.radius) + 2, size)
        y0, y1 = max(int(sprite.cy - sprite.radius) - 1, 0), min(int(sprite.cy + sprite.radius) + 2, size)
        xs, ys = np.meshgrid(_samples(x0, x1), _samples(y0, y1), indexing="xy")
        inside = _coverage(sprite, xs, ys).reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3))
        canvas[y0:y1, x0:x1] = np.maximum(canvas[y0:y1, x0:x1], inside * sprite.intensity)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


POSITION_RADIUS = (0.15, 0.25)  # sprite radius as a fraction of the image side (position task)


def _random_sprite(rng: np.random.Generator, size: int, kind: str | None = None,
                   radius_range: tuple[float, float] = POSITION_RADIUS) -> Sprite:
    radius = rng.uniform(*radius_range) * size
    margin = radius + 1.0  # the sprite stays wholly inside the canvas whatever its rotation
    return Sprite(
        kind=kind or KINDS[rng.integers(len(KINDS))],
        cx=rng.uniform(margin, size - margin),
        cy=rng.uniform(margin, size - margin),
        radius=radius,
        angle=rng.uniform(0.0, 2 * math.pi),
        intensity=rng.uniform(140.0, 255.0),
    )


def position_bins(size: int, bins: int) -> np.ndarray:
    """Edges (in pixels) of the horizontal position classes: ``bins`` equal bins over the range that a centre of
    the largest sprite can take, so a label depends on the x position alone, not on the sprite's size."""
    margin = POSITION_RADIUS[1] * size + 1.0
    return np.linspace(margin, size - margin, bins + 1)


# ---- the tasks: (rng, size, bins/max_count) -> (image, label) -------------------------------------------------
def _position(rng: np.random.Generator, size: int, bins: int) -> tuple[np.ndarray, int]:
    sprite = _random_sprite(rng, size)
    label = int(rng.integers(bins))  # draw the class first so that classes are balanced
    edges = position_bins(size, bins)
    cx = edges[label] + rng.uniform(0.05, 0.95) * (edges[label + 1] - edges[label])  # off the bin edges a little
    sprite = Sprite(sprite.kind, cx, sprite.cy, sprite.radius, sprite.angle, sprite.intensity)
    return render([sprite], size), label


def _count(rng: np.random.Generator, size: int, max_count: int) -> tuple[np.ndarray, int]:
    count = int(rng.integers(1, max_count + 1))
    sprites: list[Sprite] = []
    while len(sprites) < count:
        for _attempt in range(200):
            candidate = _random_sprite(rng, size, radius_range=(0.07, 0.11))
            if all(math.hypot(candidate.cx - s.cx, candidate.cy - s.cy) > candidate.radius + s.radius + 1.5
                   for s in sprites):
                sprites.append(candidate)
                break
        else:  # crowded: start the layout again (rare for max_count <= 8 at this sprite size)
            sprites = []
    return render(sprites, size), count - 1


def _orientation(rng: np.random.Generator, size: int, bins: int) -> tuple[np.ndarray, int]:
    sprite = _random_sprite(rng, size, kind="triangle", radius_range=(0.22, 0.32))
    label = int(rng.integers(bins))
    angle = (label + rng.uniform(0.05, 0.95)) * 2 * math.pi / bins
    sprite = Sprite(sprite.kind, sprite.cx, sprite.cy, sprite.radius, angle, sprite.intensity)
    return render([sprite], size), label


@dataclass(frozen=True)
class SpriteTask:
    make: Callable[[np.random.Generator, int, int], tuple[np.ndarray, int]]
    param: str  # the name of the option that sets the class count
    default: int
    class_names: Callable[[int], list[str]]


SPRITE_TASKS: dict[str, SpriteTask] = {
    "sprites_position": SpriteTask(_position, "bins", 8, lambda n: [f"x-bin {i}" for i in range(n)]),
    "sprites_count": SpriteTask(_count, "max_count", 6, lambda n: [str(i + 1) for i in range(n)]),
    "sprites_orientation": SpriteTask(
        _orientation, "bins", 8, lambda n: [f"{round(360 * i / n)}-{round(360 * (i + 1) / n)} deg" for i in range(n)]),
}


def sprite_source(task: str, split: str = "train", *, num_examples: int | None = None, size: int = 32,
                  seed: int = 0, channels: int = 1, **options: int) -> TensorSource:
    """An in-memory source of a sprite task (see the module docstring). ``bins`` / ``max_count`` set the
    number of classes; ``channels=3`` repeats the grey image into RGB."""
    if task not in SPRITE_TASKS:
        raise ConfigError(f"unknown sprite task {task!r}; expected one of {', '.join(SPRITE_TASKS)}")
    spec = SPRITE_TASKS[task]
    unknown = set(options) - {spec.param}
    if unknown:
        raise ConfigError(f"{task}: unknown option(s) {', '.join(sorted(unknown))}; valid: num_examples, size, "
                          f"seed, channels, {spec.param}")
    classes = int(options.get(spec.param, spec.default))
    if split not in SPLITS:
        raise ConfigError(f"{task}: split={split!r} is unknown; expected one of {', '.join(SPLITS)}")
    if size < 16:
        raise ConfigError(f"{task}: size={size} is too small; expected >= 16 pixels")
    if classes < 2:
        raise ConfigError(f"{task}: {spec.param}={classes} is invalid; expected >= 2")
    if channels not in (1, 3):
        raise ConfigError(f"{task}: channels={channels}; expected 1 or 3")
    n = DEFAULT_SIZES[split] if num_examples is None else int(num_examples)
    if n < 1:
        raise ConfigError(f"{task}: num_examples={n} is invalid; expected a positive integer")
    task_id = list(SPRITE_TASKS).index(task)
    images = np.empty((n, 1, size, size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, task_id, SPLITS[split], i])
        images[i, 0], labels[i] = spec.make(rng, size, classes)
    tensor = torch.from_numpy(images)
    if channels == 3:
        tensor = tensor.expand(-1, 3, -1, -1).contiguous()
    return TensorSource(tensor, labels, spec.class_names(classes), name=task)


# ---- named factories for vitlab.data.get_source (explicit keywords: get_source checks option names) -------------
def sprites_position(split: str = "train", *, num_examples: int | None = None, size: int = 32, seed: int = 0,
                     channels: int = 1, bins: int = 8) -> TensorSource:
    """Horizontal position of one sprite, in ``bins`` classes (dSprites-location stand-in)."""
    return sprite_source("sprites_position", split, num_examples=num_examples, size=size, seed=seed,
                         channels=channels, bins=bins)


def sprites_count(split: str = "train", *, num_examples: int | None = None, size: int = 32, seed: int = 0,
                  channels: int = 1, max_count: int = 6) -> TensorSource:
    """How many sprites (1..max_count), in ``max_count`` classes (CLEVR-count stand-in)."""
    return sprite_source("sprites_count", split, num_examples=num_examples, size=size, seed=seed,
                         channels=channels, max_count=max_count)


def sprites_orientation(split: str = "train", *, num_examples: int | None = None, size: int = 32, seed: int = 0,
                        channels: int = 1, bins: int = 8) -> TensorSource:
    """Direction of one arrow-like triangle, in ``bins`` classes of the full turn (dSprites-orientation)."""
    return sprite_source("sprites_orientation", split, num_examples=num_examples, size=size, seed=seed,
                         channels=channels, bins=bins)


SPRITE_FACTORIES = {
    "sprites_position": sprites_position,
    "sprites_count": sprites_count,
    "sprites_orientation": sprites_orientation,
}
