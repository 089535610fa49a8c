"""Decode one image file into a uint8 tensor, whatever the file throws at us.

Real folders hold 16-bit PNGs, palette GIFs with transparency, CMYK JPEGs from print shops, phone photos
that are stored sideways with an EXIF rotation tag, truncated downloads and the odd decompression bomb.
Every one of those either comes out as a sane ``uint8 [C, H, W]`` tensor or raises :class:`BadImage`
naming the file, so the caller (a source with ``on_bad_image="error"|"skip"``) decides what to do.

Decoding is also where most of the cost of a folder pipeline goes, so :func:`load_image` can crop and
resize on the way in: for JPEGs it asks libjpeg for a reduced-size decode ("draft") that is still large
enough for the crop, which makes a 4000 px photo cost about as much as a 500 px one.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from vitlab.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

# PIL's own warning limit (about 89.5 megapixels); larger images are treated as decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees (width <-> height)

ImageInput = Union[str, Path, bytes]
# (width, height) of the upright image -> crop box (x0, y0, x1, y1) in its pixels
CropFn = Callable[[int, int], tuple[float, float, float, float]]


class BadImage(DataError):
    """One image cannot be used: unreadable, corrupt, truncated, too large. The message names the file."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def open_image(src: ImageInput, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open (not decode) an image and check its header: format known and pixel count within ``max_pixels``."""
    name = name or (str(src) if not isinstance(src, bytes) else "<bytes>")
    try:
        fileobj = io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb")
    except OSError as error:
        raise BadImage(name, f"cannot read file ({error.strerror or error})") from None
    try:
        with warnings.catch_warnings():
            # PIL warns above its limit and raises above twice it; we apply our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fileobj)
    except Image.DecompressionBombError as error:
        fileobj.close()
        raise BadImage(name, f"decompression bomb refused ({error})") from None
    except Exception as error:  # PIL raises many types for junk headers
        fileobj.close()
        raise BadImage(name, f"not a readable image ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise BadImage(name, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        image.close()
        raise BadImage(name, f"decompression bomb refused: {width}x{height} = {width * height} pixels "
                             f"exceeds max_pixels={max_pixels}")
    return image


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after applying the EXIF orientation, read from the header without decoding."""
    width, height = image.size
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not make a good image unusable
        orientation = 1
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def load_image(
    src: ImageInput,
    *,
    channels: int = 3,
    size: tuple[int, int] | None = None,
    crop: CropFn | None = None,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: int = 255,
) -> torch.Tensor:
    """Decode ``src`` into ``uint8 [channels, H, W]``; optionally crop (box from ``crop``) and resize.

    ``size`` is (height, width). Alpha is composited onto a flat ``background`` grey level (255 = white,
    what product photos and icons assume) rather than dropped, which would expose whatever colour the
    transparent pixels happen to carry. Raises :class:`BadImage` naming the file on any failure.
    """
    name = name or (str(src) if not isinstance(src, bytes) else "<bytes>")
    image = open_image(src, name=name, max_pixels=max_pixels)
    try:
        up_w, up_h = upright_size(image)
        box = crop(up_w, up_h) if crop is not None else (0.0, 0.0, float(up_w), float(up_h))
        if size is not None and image.format == "JPEG":
            _request_draft(image, (up_w, up_h), box, size)
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            image = to_mode(image, channels, background)
            if size is not None:
                # The draft may have shrunk the image: scale the box from upright-header pixels to actual ones.
                sx, sy = image.width / up_w, image.height / up_h
                scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=scaled)
            elif crop is not None:
                image = image.crop(tuple(int(round(v)) for v in box))
            array = np.asarray(image, dtype=np.uint8)
        except BadImage:
            raise
        except Image.DecompressionBombError as error:
            raise BadImage(name, f"decompression bomb refused ({error})") from None
        except Exception as error:  # truncated data, broken deflate streams, bad tiles, ...
            raise BadImage(name, f"cannot decode image ({type(error).__name__}: {error})") from None
    finally:
        image.close()
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # [C, H, W], writable


def _request_draft(image: Image.Image, upright: tuple[int, int], box, size: tuple[int, int]) -> None:
    """Ask libjpeg for the smallest DCT-scaled decode that keeps the crop at least ``size`` large."""
    crop_w = max(box[2] - box[0], 1e-6)
    crop_h = max(box[3] - box[1], 1e-6)
    need_w = math.ceil(upright[0] * size[1] / crop_w)  # upright-image width needed
    need_h = math.ceil(upright[1] * size[0] / crop_h)
    if image.size != upright:  # stored sideways: the draft request is in stored orientation
        need_w, need_h = need_h, need_w
    if need_w < image.width and need_h < image.height:
        image.draft(None, (need_w, need_h))


def to_mode(image: Image.Image, channels: int, background: int = 255) -> Image.Image:
    """Convert any PIL mode to "L" (channels=1) or "RGB" (channels=3) without silent clipping.

    PIL's ``convert("L")`` on 16-bit images clips everything above 255 to white; here high-bit-depth
    images are scaled down instead (16-bit: keep the top 8 bits).
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image).astype(np.int64)
        if mode == "I" and array.max(initial=0) <= 255 and array.min(initial=0) >= 0:
            array8 = array.astype(np.uint8)  # 8-bit data stored as 32-bit ints
        else:
            array8 = (np.clip(array, 0, 65535) >> 8).astype(np.uint8)
        image = Image.fromarray(array8, "L")
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(array, initial=0.0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8), "L")
    elif mode == "1":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "RGBA", "RGBa"):
        image = _composite(image.convert("RGBA"), background)
    target = "RGB" if channels == 3 else "L"
    if image.mode != target:
        image = image.convert(target)  # RGB<->L (ITU-R 601 luma), CMYK, YCbCr, LAB, ...
    return image


def _composite(rgba: Image.Image, background: int) -> Image.Image:
    base = Image.new("RGBA", rgba.size, (background, background, background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")
