"""One row of the official-checkpoint key table (:class:`KeyMap`), shared by ``official`` and ``official_resnet``.

It sits in its own module so that ``official.py`` (which assembles the table) can import the ResNet rows from
``official_resnet.py`` while that module builds its rows without importing ``official.py`` back.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyMap:
    """One row of the table: official key <-> our key, with the layout that converts the array."""

    official: str
    ours: str
    layout: str  # a layout that official._to_torch / _to_official convert
    part: int | None = None  # for the fused qkv: 0 = query, 1 = key, 2 = value
    heads: int = 1
