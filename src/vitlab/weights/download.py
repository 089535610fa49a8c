"""The one downloader of vitlab: resumable, atomic, SHA-256 checked, cached, mirror-aware, clear when offline.

Everything vitlab fetches goes through :func:`fetch` (data sets call it from ``vitlab.data.download``; weights
go through :func:`download_weights`, which adds the cache and the hash record):

* **Atomic.** Bytes stream into ``NAME.part`` next to the destination; only a complete download whose hash
  checks out is renamed onto ``NAME``. A killed process leaves a ``.part`` file, never one that looks complete.
* **Resumable.** A later call finds the ``.part`` file and asks for the rest with an HTTP ``Range`` request;
  a server that ignores ranges (answers 200) restarts the file from the beginning.
* **Checked.** With a known SHA-256 the file is refused unless it matches. Weights whose publisher gives no
  hash are hashed on first download and recorded in the cache's ``index.json``; a later download of the same
  URL whose bytes differ, or a cached file changed on disk, is refused with one line.
* **Offline.** ``$VITLAB_MIRROR`` replaces the scheme and host of every weights URL (``https://host/a/b.npz`` ->
  ``$VITLAB_MIRROR/a/b.npz``; a ``file://`` or plain folder mirror is read in place). With no network the
  error is one line naming the URL and the path to put the file at by hand.

The cache root is ``$VITLAB_CACHE``, else ``$XDG_CACHE_HOME/vitlab``, else ``~/.cache/vitlab``; weights live
under ``weights/<host>/<path of the URL>``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from vitlab.errors import DownloadError
from vitlab.progress import Progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MIRROR_ENV = "VITLAB_MIRROR"
CACHE_ENV = "VITLAB_CACHE"
INDEX_NAME = "index.json"

Opener = Callable[..., object]  # urllib.request.urlopen-compatible: opener(url_or_request, timeout=...)


class ChecksumError(DownloadError):
    """The bytes of a download (or of a cached file) do not match the known or recorded SHA-256."""

    def __init__(self, message: str, actual: str = "") -> None:
        super().__init__(message)
        self.actual = actual


class OfflineError(DownloadError):
    """The server could not be reached (or answered with an error); the message says how to get the file."""


def cache_dir() -> Path:
    """The user cache of vitlab: ``$VITLAB_CACHE``, else ``$XDG_CACHE_HOME/vitlab``, else ``~/.cache/vitlab``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vitlab"


def weights_dir() -> Path:
    return cache_dir() / "weights"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------
# fetch: one URL to one file
# --------------------------------------------------------------------------------------------------------
def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None, opener: Opener | None = None,
          timeout: float = 60.0, progress: bool = True, desc: str | None = None) -> tuple[Path, str]:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); return ``(dest, SHA-256 of its bytes)``.

    Raises :class:`ChecksumError` when ``sha256`` is given and differs (the partial file is removed, so the next
    try starts clean), and lets network errors (``urllib.error.URLError``, ``OSError``) through for the caller,
    who knows what to tell the user.
    """
    opener = opener or urllib.request.urlopen
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _locked(_lock_path(dest)):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url)
        if have and url.startswith(("http://", "https://")):
            request.add_header("Range", f"bytes={have}-")
        with opener(request, timeout=timeout) as response:
            status = getattr(response, "status", None) or getattr(response, "code", None) or 200
            if have and status != 206:  # the server sent the whole file: start over
                log.info("%s: server ignored the range request; downloading from the start", url)
                have = 0
            total = _total_size(response, have)
            digest = hashlib.sha256()
            if have:
                with open(part, "rb") as done:
                    for chunk in iter(lambda: done.read(CHUNK), b""):
                        digest.update(chunk)
                log.info("resuming %s at %d bytes", url, have)
            bar = Progress(total or 1, desc=desc or dest.name, start=have, log_every=1 << 62,
                           enabled=progress and total is not None)
            done_bytes = have
            with open(part, "ab" if have else "wb") as out:
                try:
                    while chunk := response.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        done_bytes += len(chunk)
                        bar.update(done_bytes, MB=round(done_bytes / 1e6, 1))
                except http.client.IncompleteRead as error:  # the connection dropped: keep what came
                    out.write(error.partial)
                    done_bytes += len(error.partial)
                finally:
                    out.flush()
                    os.fsync(out.fileno())
                    bar.close()
        if total is not None and done_bytes != total:
            raise OfflineError(f"{url}: connection closed after {done_bytes} of {total} bytes; run again to resume")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: SHA-256 {actual} does not match the expected {sha256}", actual)
        os.replace(part, dest)
    return dest, actual


def _total_size(response, have: int) -> int | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    content_range = headers.get("Content-Range")
    if content_range and "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    length = headers.get("Content-Length")
    return have + int(length) if length is not None else None


def _lock_path(dest: Path) -> Path:
    """A lock file outside the destination folder (which must hold nothing but finished files and ``.part``)."""
    key = hashlib.sha1(str(dest.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "locks" / f"{key}.lock"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time per destination (two trainings starting at once share one download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------------
# download_weights: the cache, the hash record, the mirror and the offline message
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Download:
    """Where a URL's file lives locally and whether it came from the cache."""

    url: str
    path: Path
    sha256: str
    cached: bool


def cache_path(url: str) -> Path:
    """Where the cache keeps ``url``: ``weights/<host>/<path>`` (``%2B`` and friends decoded)."""
    parts = urllib.parse.urlsplit(url)
    relative = urllib.parse.unquote(parts.path).lstrip("/")
    if not relative or relative.endswith("/") or ".." in Path(relative).parts:
        raise DownloadError(f"{url}: not a URL of a file")
    return weights_dir() / (parts.hostname or "local") / relative


def mirrored(url: str, mirror: str | None = None) -> str:
    """``url`` with its scheme and host replaced by ``$VITLAB_MIRROR`` (unchanged when no mirror is set)."""
    mirror = os.environ.get(MIRROR_ENV) if mirror is None else mirror
    if not mirror:
        return url
    path = urllib.parse.urlsplit(url).path.lstrip("/")
    if "://" not in mirror:  # a plain folder
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + path


def download_weights(url: str, *, sha256: str | None = None, opener: Opener | None = None,
                     timeout: float = 60.0, progress: bool = True) -> Download:
    """The local copy of a weights file at ``url`` (``http(s)://`` or ``file://``), downloading it when needed.

    ``file://`` URLs are read in place (hash-checked when ``sha256`` is given). Others are cached by URL; a
    cache hit makes no request.
    """
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        if not path.is_file():
            raise DownloadError(f"{url}: no such file")
        if sha256 is not None:
            _check_file(path, sha256, url)
        return Download(url, path, sha256 or "", True)
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{url}: expected an http://, https:// or file:// URL")
    dest = cache_path(url)
    index = _Index(weights_dir() / INDEX_NAME)
    known = sha256 or index.sha256(url)
    if dest.is_file():
        return Download(url, dest, _verify_cached(dest, url, known, index), True)
    source = mirrored(url)
    if source.startswith("file://"):  # a mirror folder on this machine: copy from it like a download
        if not Path(urllib.request.url2pathname(urllib.parse.urlsplit(source).path)).is_file():
            raise OfflineError(f"{url}: not in the mirror {os.environ.get(MIRROR_ENV)} (looked for {source}); "
                               f"put the file at {dest}")
    try:
        path, actual = fetch(source, dest, sha256=known, opener=opener, timeout=timeout, progress=progress,
                             desc=dest.name)
    except ChecksumError as error:
        recorded = "" if sha256 else " recorded at its first download"
        raise ChecksumError(f"{url}: the file changed: its SHA-256 differs from the one{recorded} ({known}); "
                            f"refusing the new bytes ({error.actual})") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        if isinstance(error, DownloadError):
            raise
        reason = getattr(error, "reason", None) or error
        via = f" (via mirror {source})" if source != url else ""
        raise OfflineError(f"cannot download {url}{via}: {reason}; download it by hand and put it at {dest}, "
                           f"or set ${MIRROR_ENV} to a mirror") from None
    index.record(url, actual, path)
    return Download(url, path, actual, False)


def _check_file(path: Path, sha256: str, url: str) -> str:
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise ChecksumError(f"{path}: SHA-256 {actual} does not match {sha256} for {url}; delete it to download again")
    return actual


def _verify_cached(path: Path, url: str, known: str | None, index: "_Index") -> str:
    """Re-hash a cached file only when its size or time stamp moved since it was recorded."""
    stat = path.stat()
    entry = index.get(url)
    if entry and known and entry.get("sha256") == known and entry.get("size") == stat.st_size \
            and entry.get("mtime_ns") == stat.st_mtime_ns:
        return known
    if known is None:  # placed by hand: trust it and record it
        actual = sha256_file(path)
        index.record(url, actual, path)
        return actual
    actual = _check_file(path, known, url)
    index.record(url, actual, path)
    return actual


class _Index:
    """``index.json`` in the weights cache: URL -> SHA-256 (recorded at first download), size and time stamp."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, url: str) -> dict | None:
        return self._read().get(url)

    def sha256(self, url: str) -> str | None:
        entry = self.get(url)
        return entry.get("sha256") if entry else None

    def record(self, url: str, sha256: str, path: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(_lock_path(self.path)):
            data = self._read()
            stat = path.stat()
            data[url] = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                         "file": str(path), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            tmp = self.path.with_name(f".{INDEX_NAME}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
