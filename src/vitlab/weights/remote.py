"""Remote weights references as local files: ``pretrained:MODEL.TAG``, ``http(s)://`` and ``file://`` URLs.

``pretrained:`` names an entry of the catalogue (:mod:`vitlab.weights.catalog`); URLs are fetched as they are.
Both go through the one downloader (:func:`vitlab.weights.download.download_weights`: cache, resume, SHA-256,
mirror, one line when offline). What the file holds is then read like any local weights file.
"""
from __future__ import annotations

import os
from pathlib import Path

from vitlab.weights import catalog
from vitlab.weights.download import download_weights

PRETRAINED_PREFIX = "pretrained:"
URL_PREFIXES = ("http://", "https://", "file://")
REMOTE_PREFIXES = (PRETRAINED_PREFIX, *URL_PREFIXES)


def is_remote(ref: str | os.PathLike) -> bool:
    return isinstance(ref, str) and ref.startswith(REMOTE_PREFIXES)


def fetch_reference(ref: str | os.PathLike) -> tuple[Path, catalog.Checkpoint | None]:
    """The local file of a weights reference, and its catalogue entry when it names one (a local path as is)."""
    ref = str(ref)
    if ref.startswith(PRETRAINED_PREFIX):
        entry = catalog.lookup(ref[len(PRETRAINED_PREFIX):])
        return download_weights(entry.url, sha256=entry.sha256).path, entry
    if is_remote(ref):
        return download_weights(ref).path, None
    return Path(ref).expanduser(), None
