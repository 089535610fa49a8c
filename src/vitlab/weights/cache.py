"""vitlab's on-disk cache: one directory, content-addressed entries, written atomically.

Converted weights (a timm model turned into our safetensors) and, later, downloaded files live here. An entry's
name is derived from everything that decides its content (for a timm conversion: the timm model name, timm's
version and the hash of a local weights file), so a second request finds the first one's file and a changed
input gets a new entry instead of a stale one.

The directory is ``$VITLAB_CACHE`` when set, else ``$XDG_CACHE_HOME/vitlab``, else ``~/.cache/vitlab``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from vitlab.models.weights import atomic_write

CACHE_ENV = "VITLAB_CACHE"


def cache_dir() -> Path:
    """The root of vitlab's cache (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vitlab"


def content_key(fields: Mapping[str, Any]) -> str:
    """A short, stable hash of the inputs that decide an entry's content."""
    canonical = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes; remembered per process while its size and modification time stay the same
    (one run resolves its ``init_from`` several times, and hashing a ViT-H file takes seconds)."""
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # in chunks: a multi-GB checkpoint never sits in memory whole
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_file(namespace: str, label: str, fields: Mapping[str, Any], suffix: str,
                make: Callable[[Path], None]) -> Path:
    """The cache entry for ``fields``: made once by ``make(tmp_path)``, renamed into place, reused afterwards.

    ``label`` only makes the file name readable (``vit_base_patch16_224-<key>.safetensors``); the key alone
    decides identity. Two processes racing on the same entry both write a complete file and the last rename
    wins, so a reader never sees a partial one.
    """
    safe_label = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:80] or "entry"
    path = cache_dir() / namespace / f"{safe_label}-{content_key(fields)}{suffix}"
    if not path.is_file():
        atomic_write(path, lambda tmp: make(Path(tmp)))
    return path
