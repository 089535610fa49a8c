"""Bad input never loses work: every odd image mode decodes right; broken files fail by name or are skipped."""
from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import build_stream, get_source
from vitlab.data.images import BadImage, load_image
from vitlab.errors import DataError


def _save(image: Image.Image, path: Path, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kw)
    return path


def test_modes_come_out_as_rgb_or_grey(tmp_path):
    grey = _save(Image.new("L", (4, 3), 77), tmp_path / "l.png", "PNG")
    assert load_image(grey).tolist() == torch.full((3, 3, 4), 77, dtype=torch.uint8).tolist()
    assert load_image(grey, channels=1).shape == (1, 3, 4)
    # LA / RGBA: transparent pixels become the background (white), opaque ones keep their colour
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (10, 20, 30, 0))
    out = load_image(_save(rgba, tmp_path / "rgba.png", "PNG"))
    assert out[:, 0, 0].tolist() == [10, 20, 30] and out[:, 0, 1].tolist() == [255, 255, 255]
    la = Image.new("LA", (2, 1), (50, 255))
    la.putpixel((1, 0), (50, 0))
    assert load_image(_save(la, tmp_path / "la.png", "PNG"), channels=1)[0, 0].tolist() == [50, 255]
    # P with a transparent palette entry
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([200, 0, 0, 0, 200, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    out = load_image(_save(pal, tmp_path / "p.png", "PNG", transparency=1))
    assert out[:, 0, 0].tolist() == [200, 0, 0] and out[:, 0, 1].tolist() == [255, 255, 255]
    # CMYK JPEG (print-shop files)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(cmyk, tmp_path / "cmyk.jpg", "JPEG", quality=95))
    assert out[0].float().mean() > 200 and out[1].float().mean() < 60
    # 16-bit grey: scaled down, not clipped to white
    deep = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert deep.mode.startswith("I")
    out = load_image(_save(deep, tmp_path / "deep.png", "PNG"), channels=1)
    assert out[0, 0].tolist() == [0, 128, 255]


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))  # top-left marker in the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = _save(image, tmp_path / "rotated.jpg", "JPEG", exif=exif.tobytes(), quality=100)
    out = load_image(path)
    assert out.shape == (3, 4, 2)  # upright: portrait
    assert out[:, 0, 1].float().mean() > 150  # the marker ends up top-right
    resized = load_image(path, size=(8, 4))
    assert resized.shape == (3, 8, 4)


def test_broken_files_raise_naming_the_file(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    truncated = _write(tmp_path / "truncated.jpg", good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(BadImage, match="truncated.jpg"):
        load_image(truncated)
    junk = _write(tmp_path / "junk.png", b"definitely not a png")
    with pytest.raises(BadImage, match="junk.png: not a readable image"):
        load_image(junk)
    with pytest.raises(BadImage, match="missing.jpg: cannot read"):
        load_image(tmp_path / "missing.jpg")
    bomb = _save(Image.new("L", (300, 300)), tmp_path / "bomb.png", "PNG")
    with pytest.raises(BadImage, match="bomb.png: decompression bomb"):
        load_image(bomb, max_pixels=10_000)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def folder_with_truncated_jpeg(tmp_path):
    for cls, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        for i in range(6):
            _save(Image.new("RGB", (20, 20), colour), tmp_path / cls / f"{i}.jpg", "JPEG")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    bad = _write(tmp_path / "b" / "broken.jpg", buf.getvalue()[:700])
    return tmp_path, bad


def test_truncated_jpeg_fails_naming_it(folder_with_truncated_jpeg):
    root, bad = folder_with_truncated_jpeg
    source = get_source("image_folder", root=root)  # the header is fine; decoding is not
    stream = build_stream(source, batch_size=13, train=False, img_size=16)
    with pytest.raises(DataError, match="broken.jpg"):
        list(stream)
    with pytest.raises(DataError, match="broken.jpg"):
        get_source("image_folder", root=root, verify="full")


@pytest.mark.parametrize("workers", [0, 2])
def test_with_skip_it_trains_on_the_rest(folder_with_truncated_jpeg, workers):
    root, bad = folder_with_truncated_jpeg
    source = get_source("image_folder", root=root, on_bad_image="skip")
    assert len(source) == 13 and source.bad_files == []
    stream = build_stream(source, batch_size=4, train=True, img_size=16, augment="paper", seed=0,
                          num_workers=workers)
    batches = list(itertools.islice(iter(stream), 9))  # three epochs: the broken file comes up
    assert all(x.shape == (4, 3, 16, 16) and torch.isfinite(x).all() for x, _ in batches)
    assert [p for p, _ in stream.bad_files] == [str(bad)]
    assert "cannot decode" in stream.bad_files[0][1]
    # full verification instead drops it up front
    checked = get_source("image_folder", root=root, on_bad_image="skip", verify="full")
    assert len(checked) == 12 and [p for p, _ in checked.bad_files] == [str(bad)]


def test_empty_class_folder(tmp_path):
    _save(Image.new("RGB", (8, 8)), tmp_path / "full" / "0.png", "PNG")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        get_source("image_folder", root=tmp_path)
    source = get_source("image_folder", root=tmp_path, on_bad_image="skip")
    assert source.classes == ["empty", "full"] and len(source) == 1
    assert source.bad_files[0][0].endswith("empty")


def test_unreadable_and_bomb_skipped_at_header_check(tmp_path):
    _save(Image.new("RGB", (8, 8)), tmp_path / "c" / "ok.png", "PNG")
    _write(tmp_path / "c" / "junk.jpg", b"\x00" * 100)
    _save(Image.new("L", (200, 200)), tmp_path / "c" / "huge.png", "PNG")
    with pytest.raises(DataError, match="huge.png: decompression bomb"):  # files are checked in name order
        get_source("image_folder", root=tmp_path, max_pixels=10_000)
    source = get_source("image_folder", root=tmp_path, max_pixels=10_000, on_bad_image="skip")
    assert len(source) == 1
    assert sorted(Path(p).name for p, _ in source.bad_files) == ["huge.png", "junk.jpg"]
