"""``Predictor(ref).predict(images)``: top-k classes with names and probabilities, whatever the images are.

Images are decoded and preprocessed exactly as ``vitlab eval`` does for image files (the checkpoint's own
preprocessing: decode mode, bilinear resize of the whole image, mean / std, channel adaptation), so a
prediction's top-1 on a labelled folder agrees with the evaluation's accuracy. A file that cannot be read is
reported by name in its :class:`Prediction` and the rest are predicted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from vitlab.data.images import BadImage, load_image, to_mode
from vitlab.data.transforms import adapt_channels
from vitlab.errors import ConfigError
from vitlab.predict.backends import OnnxBackend, TorchBackend, open_backend

ImageLike = str | os.PathLike | bytes | Image.Image | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """One image: its name, the top-k ``(class name, class index, probability)``, or why it was unreadable."""

    source: str
    top: list[tuple[str, int, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {"path": self.source,
                "top": [{"class": name, "index": index, "probability": prob} for name, index, prob in self.top]}


class Predictor:
    """Predictions from a checkpoint reference (see :func:`vitlab.predict.backends.open_backend`)."""

    def __init__(self, ref: str | os.PathLike | TorchBackend | OnnxBackend, *, device: str = "cpu",
                 batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: expected a positive integer")
        self.backend = ref if isinstance(ref, (TorchBackend, OnnxBackend)) else open_backend(ref, device=device)
        self.batch_size = int(batch_size)
        pp = self.backend.preprocessing
        self.size = (int(pp["img_size"][0]), int(pp["img_size"][1]))
        self.channels = int(pp.get("channels", pp.get("in_chans", 3)))
        self.in_chans = int(pp.get("in_chans", self.channels))
        self.mean = torch.tensor(pp.get("mean", [0.5] * self.in_chans), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(pp.get("std", [0.5] * self.in_chans), dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def classes(self) -> list[str]:
        names = self.backend.classes
        return list(names) if names else [f"class_{i}" for i in range(self.backend.num_classes)]

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5) -> list[Prediction]:
        """Top-``top_k`` predictions for each image (files that cannot be read carry ``error`` instead)."""
        if top_k < 1:
            raise ConfigError(f"top_k={top_k}: expected a positive integer")
        if isinstance(images, (str, os.PathLike, bytes, Image.Image)) or (
                isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3):
            images = [images]
        return list(self.iter_predict(images, top_k))

    def iter_predict(self, images: Iterable[ImageLike], top_k: int = 5) -> Iterable[Prediction]:
        """Predictions in input order, a batch at a time (so a large folder streams)."""
        pending: list[tuple[str, torch.Tensor]] = []
        failed: list[Prediction] = []
        for index, image in enumerate(images):
            name = _name(image, index)
            try:
                pending.append((name, self.decode(image, name)))
            except BadImage as error:
                failed.append(Prediction(name, error=error.reason))
            if len(pending) == self.batch_size:
                yield from failed
                failed = []
                yield from self._run(pending, top_k)
                pending = []
        yield from failed
        if pending:
            yield from self._run(pending, top_k)

    def decode(self, image: ImageLike, name: str) -> torch.Tensor:
        """``uint8 [channels, H, W]`` at the checkpoint's size, decoded as evaluation decodes image files."""
        if isinstance(image, (str, os.PathLike, bytes)):
            return load_image(image if isinstance(image, bytes) else str(image), channels=self.channels,
                              size=self.size, name=name)
        if isinstance(image, Image.Image):
            picture = to_mode(image, self.channels).resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(picture, dtype=np.uint8)
            array = array[:, :, None] if array.ndim == 2 else array
            return torch.from_numpy(array.transpose(2, 0, 1).copy())
        tensor = torch.as_tensor(image)
        if tensor.ndim != 3:
            raise BadImage(name, f"expected an image [C, H, W], got shape {tuple(tensor.shape)}")
        tensor = tensor.float()
        if tuple(tensor.shape[1:]) != self.size:
            tensor = torch.nn.functional.interpolate(tensor[None], size=self.size, mode="bilinear",
                                                     antialias=True, align_corners=False)[0]
        return tensor

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels 0..255 ``[B, C, H, W]`` -> the model's input: [0, 1], channels adapted, ``(x - mean) / std``."""
        x = adapt_channels(pixels.float().div(255.0), self.in_chans)
        return (x - self.mean) / self.std

    def _run(self, batch: list[tuple[str, torch.Tensor]], top_k: int) -> list[Prediction]:
        x = self.preprocess(torch.stack([pixels.float() for _, pixels in batch]))
        logits = torch.from_numpy(np.asarray(self.backend(x), dtype=np.float32))  # [B, K]
        probs = logits.softmax(dim=-1)
        k = min(top_k, probs.shape[-1])
        values, indices = probs.topk(k, dim=-1)
        names = self.classes
        out = []
        for (name, _), vals, idxs in zip(batch, values.tolist(), indices.tolist()):
            out.append(Prediction(name, [(names[i] if i < len(names) else f"class_{i}", i, float(v))
                                         for v, i in zip(vals, idxs)]))
        return out


def _name(image: Any, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"<image {index}>"
