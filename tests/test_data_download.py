"""Finding and downloading Fashion-MNIST, tested with small files served from file:// (never the network)."""
from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error

import numpy as np
import pytest

from vitlab.cli import main
from vitlab.data import download as D
from vitlab.data import get_source
from vitlab.errors import DataError


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    """A tiny Fashion-MNIST (12 train / 5 test images) in a local "mirror" with its checksum table."""
    rng = np.random.default_rng(0)
    server = tmp_path / "server"
    server.mkdir()
    content = {
        "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (12, 28, 28))),
        "train-labels-idx1-ubyte.gz": _idx(np.arange(12) % 10),
        "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (5, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": _idx(np.arange(5)),
    }
    table = {}
    for name, raw in content.items():
        packed = gzip.compress(raw)
        (server / name).write_bytes(packed)
        table[name] = (hashlib.sha256(packed).hexdigest(), hashlib.sha256(raw).hexdigest())
    monkeypatch.setattr(D, "FASHION_MNIST_FILES", table)
    monkeypatch.setattr(D, "FASHION_MNIST_URLS", (server.as_uri() + "/",))
    monkeypatch.setattr(D, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.delenv("VITLAB_DATA", raising=False)
    monkeypatch.delenv("VITLAB_CACHE", raising=False)  # the user cache then follows XDG_CACHE_HOME
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return server


def test_download_verifies_and_loads(mirror, tmp_path):
    dest = D.download_fashion_mnist(urls=D.FASHION_MNIST_URLS)
    assert dest == tmp_path / "cache" / "vitlab" / "fashion-mnist"
    assert sorted(p.name for p in dest.iterdir()) == sorted(D.FASHION_MNIST_FILES)  # no partial files left
    assert D.locate_fashion_mnist() == dest
    train, test = get_source("fashion_mnist"), get_source("fashion_mnist", split="test")
    assert len(train) == 12 and len(test) == 5 and test.labels.tolist() == [0, 1, 2, 3, 4]
    D.verify_fashion_mnist(dest)


def test_bad_mirror_is_skipped_and_bad_data_refused(mirror, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in D.FASHION_MNIST_FILES:
        (evil / name).write_bytes(b"tampered")
    dest = D.download_fashion_mnist(tmp_path / "a", urls=(evil.as_uri() + "/", mirror.as_uri() + "/"))
    assert len(get_source("fashion_mnist", root=dest)) == 12
    with pytest.raises(DataError, match="SHA-256"):
        D.download_fashion_mnist(tmp_path / "b", urls=(evil.as_uri() + "/",))
    assert not any((tmp_path / "b").iterdir())  # nothing half-written


def test_search_order(mirror, tmp_path, monkeypatch):
    D.download_fashion_mnist(tmp_path / "env" / "fashion-mnist")
    D.download_fashion_mnist(tmp_path / "cache" / "vitlab" / "fashion-mnist")
    assert D.locate_fashion_mnist() == tmp_path / "cache" / "vitlab" / "fashion-mnist"
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "env"))
    assert D.locate_fashion_mnist() == tmp_path / "env" / "fashion-mnist"
    explicit = D.download_fashion_mnist(tmp_path / "explicit")
    assert D.locate_fashion_mnist(explicit) == explicit
    with pytest.raises(DataError, match="missing"):
        D.locate_fashion_mnist(tmp_path / "nowhere")


def test_offline_error_says_how_to_get_it(mirror, tmp_path, monkeypatch, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        D.download_fashion_mnist(urls=("http://example.invalid/",))
    monkeypatch.setattr(D, "FASHION_MNIST_URLS", ("http://example.invalid/",))
    assert main(["download", "fashion_mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install dataset-fashion-mnist" in err[0] and "http" in err[0]
    with pytest.raises(DataError, match="apt-get"):
        get_source("fashion_mnist")


def test_cli_found_and_download(mirror, tmp_path, capsys):
    assert main(["download", "fashion_mnist", "--path", str(tmp_path / "d")]) == 0
    assert "downloaded" in capsys.readouterr().out
    assert main(["download", "fashion_mnist", "--path", str(tmp_path / "d")]) == 0
    assert f"found in {tmp_path / 'd'}" in capsys.readouterr().out
    assert main(["download", "digits"]) == 0
    assert main(["download", "cifar10"]) == 2
