"""Find Fashion-MNIST on this machine, or fetch it with checksums; say how to get it when offline.

Search order (first complete set wins): an explicit path, ``$VITLAB_DATA`` (itself, or its
``fashion-mnist/`` sub-folder), the Debian/Ubuntu package's ``/usr/share/datasets/fashion-mnist/``
(``apt-get install dataset-fashion-mnist``), and the user cache ``~/.cache/vitlab/fashion-mnist``
(``$VITLAB_CACHE`` or ``$XDG_CACHE_HOME`` respected). Files may be gzipped (as published) or already decompressed.

Downloads go to ``$VITLAB_DATA/fashion-mnist`` when that variable is set, else to the user cache
(``$VITLAB_CACHE`` when set). Fetching is :func:`vitlab.weights.download.fetch`, shared with the weights: each
file is hashed while it streams in, compared with the SHA-256 of the published archive, and only then
renamed into place, so an interrupted or tampered download never looks like data (and resumes next time).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

from vitlab.errors import DataError
from vitlab.weights.download import ChecksumError, fetch
from vitlab.weights.download import cache_dir as cache_dir  # the one user cache (re-exported for callers)

log = logging.getLogger(__name__)

# file -> (SHA-256 of the published .gz, SHA-256 of its decompressed content). The second hash lets us
# check copies that were re-compressed (Debian's package strips the file name from the gzip header).
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte.gz": ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                                   "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                                   "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                                  "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                                  "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
# The canonical location (Zalando's README) first, then the copy in the project's GitHub repository.
FASHION_MNIST_URLS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

HOW_TO_GET = (
    "Fashion-MNIST not found and could not be downloaded ({reason}); get it with "
    "'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or put "
    + ", ".join(FASHION_MNIST_FILES) + f" from {FASHION_MNIST_URLS[0]} into {{dest}} (or a folder named by "
    "$VITLAB_DATA)"
)

Opener = Callable[..., object]  # urllib.request.urlopen-compatible: opener(url, timeout=...) -> file-like


def default_destination() -> Path:
    data = os.environ.get("VITLAB_DATA")
    return Path(data) / "fashion-mnist" if data else cache_dir() / "fashion-mnist"


def find_file(directory: Path, stem: str) -> Path | None:
    """``stem.gz`` or the decompressed ``stem`` inside ``directory`` (also the ``stem.idx`` spelling)."""
    for candidate in (f"{stem}.gz", stem, f"{stem.replace('-idx', '.idx')}"):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def _complete(directory: Path) -> bool:
    return all(find_file(directory, name[:-3]) is not None for name in FASHION_MNIST_FILES)


def search_dirs() -> list[Path]:
    """The implicit search path, in order (the explicit path is handled by :func:`locate_fashion_mnist`)."""
    dirs: list[Path] = []
    data = os.environ.get("VITLAB_DATA")
    if data:
        dirs += [Path(data) / "fashion-mnist", Path(data) / "fashion_mnist", Path(data)]
    dirs += [DEBIAN_DIR, cache_dir() / "fashion-mnist"]
    return dirs


def locate_fashion_mnist(path: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding all four files, or None. An explicit ``path`` must hold them."""
    if path is not None:
        path = Path(path).expanduser()
        for directory in (path, path / "fashion-mnist"):
            if directory.is_dir() and _complete(directory):
                return directory
        missing = [n for n in FASHION_MNIST_FILES if find_file(path, n[:-3]) is None]
        raise DataError(f"Fashion-MNIST path {path} is missing {', '.join(missing)}")
    for directory in search_dirs():
        if directory.is_dir() and _complete(directory):
            return directory
    return None


def verify_fashion_mnist(directory: Path) -> None:
    """Check the decompressed content of every file against the published data (SHA-256)."""
    for name, (_, content_sha) in FASHION_MNIST_FILES.items():
        path = find_file(directory, name[:-3])
        if path is None:
            raise DataError(f"{directory}: {name} is missing")
        digest = hashlib.sha256(read_bytes(path)).hexdigest()
        if digest != content_sha:
            raise DataError(f"{path}: content SHA-256 {digest} does not match Fashion-MNIST's {content_sha}; "
                            "delete it and run 'vitlab download fashion_mnist'")


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (by magic number, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: corrupt gzip data ({error})") from None
    return raw


def read_idx(path: Path) -> np.ndarray:
    """Decode an IDX file (the MNIST format: magic, dimensions, then unsigned bytes) into a uint8 array."""
    data = read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()}, expected 0000 08 0n)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
                        f"file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def fetch_file(url: str, dest: Path, sha256: str, *, opener: Opener | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` with :func:`vitlab.weights.download.fetch` (atomic, resumable), refusing
    content whose SHA-256 differs from ``sha256``."""
    try:
        path, _ = fetch(url, dest, sha256=sha256, opener=opener, timeout=timeout)
    except ChecksumError as error:
        raise DataError(str(error)) from None
    return path


def download_fashion_mnist(dest: str | os.PathLike | None = None, *, urls: tuple[str, ...] | None = None,
                           opener: Opener | None = None, timeout: float = 60.0) -> Path:
    """Fetch the four files into ``dest`` (default: see module doc), trying each mirror in turn."""
    dest = Path(dest).expanduser() if dest is not None else default_destination()
    urls = FASHION_MNIST_URLS if urls is None else urls
    for name, (gz_sha, _) in FASHION_MNIST_FILES.items():
        target = dest / name
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == gz_sha:
            continue
        failures = []
        for base in urls:
            url = base + name
            try:
                log.info("downloading %s", url)
                fetch_file(url, target, gz_sha, opener=opener, timeout=timeout)
                break
            except DataError as error:  # checksum mismatch: try the next mirror
                failures.append(str(error))
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", None) or error
                failures.append(f"{url}: {reason}")
        else:
            if all("SHA-256" in f for f in failures):
                raise DataError("; ".join(failures))
            raise DataError(HOW_TO_GET.format(reason=failures[-1], dest=dest))
    return dest


def ensure_fashion_mnist(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The folder holding Fashion-MNIST: found (see search order), or downloaded when allowed."""
    found = locate_fashion_mnist(path)
    if found is not None:
        return found
    if not download:
        raise DataError(HOW_TO_GET.format(reason="download=False", dest=default_destination()))
    return download_fashion_mnist()
