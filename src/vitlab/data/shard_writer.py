"""Write a source as tar shards in the WebDataset layout that :mod:`vitlab.data.shards` reads.

A sample becomes ``<key>.<ext>`` (the image) + ``<key>.cls`` (the label as decimal text). Files of a file source
(an image folder, a manifest) are copied byte for byte, so nothing is re-encoded; an in-memory set is written as
PNG. Samples are shuffled once from ``seed`` before they are cut into shards (a streamed shard is read in order
through a small shuffle buffer, so each shard should hold a mix of classes). Each shard is written to a
temporary name and renamed, so a stopped run leaves no half shard under a final name; ``classes.json`` beside
the shards names the classes (pass it as ``classes=``).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from vitlab.data.base import FileSource, Source
from vitlab.errors import ConfigError, DataError


def write_shards(source: Source, out: str | os.PathLike, *, per_shard: int = 1000, prefix: str = "shard",
                 seed: int | None = 0) -> list[Path]:
    """Write ``source`` to ``out/<prefix>-000000.tar`` ... (``per_shard`` samples each); returns the paths."""
    if per_shard <= 0:
        raise ConfigError(f"--per-shard must be positive, got {per_shard}")
    out = Path(out)
    if out.exists() and any(out.glob(f"{prefix}-*.tar")):
        raise ConfigError(f"--out {out} already holds {prefix}-*.tar shards; choose another --out or --prefix")
    if len(source) == 0:
        raise DataError(f"{source.name}: no samples to write")
    out.mkdir(parents=True, exist_ok=True)
    order = np.arange(len(source)) if seed is None else np.random.default_rng(seed).permutation(len(source))
    paths = []
    for number, start in enumerate(range(0, len(order), per_shard)):
        path = out / f"{prefix}-{number:06d}.tar"
        tmp = path.with_name(f".{path.name}.tmp")
        with tarfile.open(tmp, "w") as tar:
            for index in order[start:start + per_shard]:
                data, ext, label = _sample(source, int(index))
                key = f"{int(index):09d}"
                for name, payload in ((f"{key}.{ext}", data), (f"{key}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        os.replace(tmp, path)
        paths.append(path)
    (out / "classes.json").write_text(json.dumps(list(source.classes)) + "\n")
    return paths


def _sample(source: Source, index: int) -> tuple[bytes, str, int]:
    """The image bytes (a file's own, or PNG of an in-memory image), their extension and the label."""
    if isinstance(source, FileSource):
        data = source.image_input(index)
        label = int(source.labels[index])
        if isinstance(data, bytes):
            return data, "jpg" if data[:2] == b"\xff\xd8" else "png", label
        ext = Path(data).suffix.lower().lstrip(".") or "jpg"
        return Path(data).read_bytes(), "jpeg" if ext == "jpe" else ext, label
    image, label = source[index]  # uint8 [C, H, W]
    pixels = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue(), "png", int(label)
