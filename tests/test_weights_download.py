"""Published weights through the one downloader, served by a local HTTP server (127.0.0.1, Range support).

No test touches the internet: the server is started here, and "offline" is a port nobody listens on.
"""
from __future__ import annotations

import http.server
import socket
import threading

import pytest
import torch

import vitlab
from vitlab.cli import main
from vitlab.errors import DownloadError
from vitlab.interop.official import load_npz_any, save_npz
from vitlab.weights import catalog
from vitlab.weights import download as D


class _Server:
    """Serves ``files`` (path -> bytes); honours ``Range: bytes=N-`` with 206; can cut a response short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_next_at: int | None = None  # send only this many bytes of the next full response, then close
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if (spec := self.headers.get("Range")) and spec.startswith("bytes="):
                    start = int(spec[len("bytes="):].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_next_at is not None:
                    payload, server.cut_next_at = payload[:server.cut_next_at], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VITLAB_MIRROR", raising=False)
    monkeypatch.setattr(D, "CHUNK", 4096)  # small reads, so that an interrupted download has written some
    return tmp_path / "cache"


def _official_file(tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    model = vitlab.create_model("vit_ti16", num_classes=5, img_size=32, depth=2, width=48, mlp_dim=96,
                                num_heads=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-zero head: logits that differ per class
    path = tmp_path / f"vit-{seed}.npz"
    save_npz(model, path)
    return path


def test_pretrained_url_equals_file_and_second_call_is_a_cache_hit(server, cache, tmp_path):
    path = _official_file(tmp_path)
    server.files["/vit_models/tiny.npz"] = path.read_bytes()
    url = server.base + "/vit_models/tiny.npz"
    x = torch.randn(3, 3, 32, 32)
    direct = load_npz_any(path).eval()
    fetched = vitlab.create_model("vit_ti16", pretrained=url).eval()
    assert torch.equal(fetched(x), direct(x))
    assert len(server.requests) == 1
    again = vitlab.create_model("vit_ti16", pretrained=url).eval()
    assert torch.equal(again(x), direct(x))
    assert len(server.requests) == 1  # the cache answered
    # a new head for transfer: backbone from the file, zero-initialised head of 3 classes
    transfer = vitlab.create_model("vit_ti16", pretrained=url, num_classes=3)
    assert transfer.head.weight.shape[0] == 3 and not transfer.head.weight.any()
    assert torch.equal(transfer.blocks[0].attn.qkv.weight, direct.blocks[0].attn.qkv.weight)


def test_interrupted_download_resumes_with_a_range_request(server, cache, tmp_path):
    body = _official_file(tmp_path).read_bytes()
    server.files["/w.npz"] = body
    url = server.base + "/w.npz"
    server.cut_next_at = len(body) // 2
    with pytest.raises(DownloadError, match="resume"):
        D.download_weights(url, progress=False)
    final = D.cache_path(url)
    part = final.with_name(final.name + ".part")
    assert not final.exists()  # nothing that looks complete
    assert 0 < part.stat().st_size <= len(body) // 2
    have = part.stat().st_size
    got = D.download_weights(url, progress=False)
    assert server.requests[-1] == ("/w.npz", f"bytes={have}-")
    assert got.path == final and final.read_bytes() == body and not part.exists()
    assert got.sha256 == D.sha256_file(final)


def test_a_changed_file_is_refused_with_one_line(server, cache, tmp_path):
    server.files["/w.npz"] = _official_file(tmp_path, 0).read_bytes()
    url = server.base + "/w.npz"
    first = D.download_weights(url, progress=False)  # records the SHA-256
    first.path.unlink()
    server.files["/w.npz"] = _official_file(tmp_path, 1).read_bytes()  # the publisher's bytes changed
    with pytest.raises(DownloadError, match="changed") as error:
        D.download_weights(url, progress=False)
    assert "\n" not in str(error.value) and url in str(error.value)
    assert not D.cache_path(url).exists()
    # a cached copy edited on disk is refused too
    server.files["/w.npz"] = _official_file(tmp_path, 0).read_bytes()
    D.download_weights(url, progress=False)
    with open(D.cache_path(url), "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(DownloadError, match="SHA-256"):
        D.download_weights(url, progress=False)


def test_offline_error_names_the_url_and_where_to_put_the_file(cache, tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/vit_models/imagenet21k/ViT-B_16.npz"
    with pytest.raises(DownloadError) as error:
        D.download_weights(url, progress=False, timeout=5)
    message = str(error.value)
    assert url in message and str(D.cache_path(url)) in message and "\n" not in message
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", "--checkpoint", url, str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0]


def test_pretrained_name_through_a_mirror(server, cache, tmp_path, monkeypatch):
    """``pretrained:MODEL.TAG`` resolves through the catalogue; $VITLAB_MIRROR replaces the official host."""
    path = _official_file(tmp_path)
    entry = catalog.Checkpoint("vit_ti16", "unit_test", catalog.GCS + "vit_models/test/tiny.npz", "test", 32, 5,
                               None, "test")
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    server.files["/vit_models/test/tiny.npz"] = path.read_bytes()
    monkeypatch.setenv("VITLAB_MIRROR", server.base)
    x = torch.randn(2, 3, 32, 32)
    model = vitlab.create_model("vit_ti16", pretrained="unit_test").eval()
    assert torch.equal(model(x), load_npz_any(path).eval()(x))
    assert server.requests == [("/vit_models/test/tiny.npz", None)]
    assert D.cache_path(entry.url).is_file()  # cached under the official URL, not the mirror's


def test_catalogue_names_and_parameter_counts():
    """Every entry names a vitlab model; counts agree with timm for the files timm also loads."""
    timm = pytest.importorskip("timm")
    entries = catalog.list_checkpoints()
    assert len({e.name for e in entries}) == len(entries) > 40
    assert all(e.url.startswith("https://storage.googleapis.com/") and e.url.endswith(".npz") for e in entries)
    pairs = {"vit_b16.i21k_ft_in1k": "vit_base_patch16_384", "vit_l16.i21k_ft_in1k_224": "vit_large_patch16_224",
             "vit_s16.augreg_i21k_ft_in1k": "vit_small_patch16_384", "bit_r50x1.bit_s": "resnetv2_50x1_bit"}
    for ours, theirs in pairs.items():
        with torch.device("meta"):
            reference = timm.create_model(theirs, pretrained=False, num_classes=1000)
        assert catalog.lookup(ours).num_params() == sum(p.numel() for p in reference.parameters()), ours
    assert catalog.lookup("ViT-B/16", True).tag == "augreg_i21k"
    with pytest.raises(vitlab.errors.ConfigError, match="published tags of vit_b16"):
        catalog.lookup("vit_b16.nope")


def test_init_from_pretrained_name_fine_tunes(server, cache, tmp_path, monkeypatch):
    """``model.init_from=pretrained:MODEL.TAG`` goes through the resolver and the download cache into training."""
    from train_helpers import tiny_tree

    from vitlab.config import RunConfig
    from vitlab.train import finetune

    torch.manual_seed(0)
    source = vitlab.create_model("vit_ti4", num_classes=7, img_size=16, depth=2, width=32, mlp_dim=64, num_heads=2)
    save_npz(source, tmp_path / "tiny.npz")
    entry = catalog.Checkpoint("vit_ti4", "unit_test", catalog.GCS + "vit_models/test/ti4.npz", "test", 16, 7,
                               None, "test")
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    server.files["/vit_models/test/ti4.npz"] = (tmp_path / "tiny.npz").read_bytes()
    monkeypatch.setenv("VITLAB_MIRROR", server.base)
    tree = tiny_tree(train={"steps": 4, "checkpoint_every": 4})
    tree["model"] = {"name": None, "init_from": "pretrained:vit_ti4.unit_test"}
    tree["task"] = "finetune"
    summary = finetune(RunConfig.from_dict(tree), tmp_path / "run", sweep={})
    assert summary["steps"] == 4 and len(server.requests) == 1
    tuned = vitlab.load_model(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert tuned.head.weight.shape[0] == 4  # the synthetic set's classes, a new head
    assert tuned.inference_meta["classes"] and tuned.inference_meta["preprocessing"]["img_size"] == [16, 16]
