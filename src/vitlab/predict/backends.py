"""What runs the model for prediction: PyTorch on a vitlab checkpoint, or onnxruntime on an exported ``.onnx``.

Both give logits for a float batch ``[B, C, H, W]`` and carry the checkpoint's class names and preprocessing
(from the safetensors metadata, or the ONNX file's metadata properties written by ``vitlab export``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.models.weights import CLASSES_KEY, PREPROCESSING_KEY, inference_meta
from vitlab.weights import resolve
from vitlab.weights.pretrained import with_inference_meta


def complete_preprocessing(saved: dict[str, Any] | None, model_config: Any) -> dict[str, Any]:
    """The saved preprocessing with what it leaves out taken from the model: its size and channels, and the
    paper's [-1, 1] pixels (older files and converted ones carry only some keys, or none)."""
    size = getattr(model_config, "img_size", 224)
    size = [size, size] if isinstance(size, int) else list(size)
    chans = int(getattr(model_config, "in_chans", 3))
    full = {"img_size": size, "resize": "bilinear", "mean": [0.5] * chans, "std": [0.5] * chans,
            "channels": chans, "in_chans": chans}
    full.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in (saved or {}).items()})
    return full


class TorchBackend:
    """A vitlab model in eval mode on ``device``."""

    kind = "pytorch"

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", name: str = "model") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.name = name
        meta = inference_meta(model)
        self.classes: list[str] | None = meta.get("classes")
        self.preprocessing = complete_preprocessing(meta.get("preprocessing"), model.config)
        self.num_classes = int(getattr(model.config, "num_classes", 0) or 0)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.model(batch.to(self.device)).float().cpu().numpy()


class OnnxBackend:
    """An ``.onnx`` file written by ``vitlab export``, run by onnxruntime on the CPU."""

    kind = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort  # optional: the [export] extra
        except ImportError as error:
            raise CheckpointError(f"{path}: running .onnx files needs onnxruntime (pip install 'vitlab[export]')") \
                from error
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CheckpointError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
        self.name = str(path)
        self.input_name = self.session.get_inputs()[0].name
        props = self.session.get_modelmeta().custom_metadata_map
        self.classes = json.loads(props[CLASSES_KEY]) if CLASSES_KEY in props else None
        if PREPROCESSING_KEY not in props:
            raise CheckpointError(f"{path}: no {PREPROCESSING_KEY} in the ONNX metadata (export it with vitlab export)")
        self.preprocessing = json.loads(props[PREPROCESSING_KEY])
        self.num_classes = int(self.session.get_outputs()[0].shape[-1] or 0)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.numpy().astype(np.float32)})[0]


def load_model_for_inference(ref: str | Path) -> nn.Module:
    """The model of any weights reference (:func:`vitlab.weights.resolve`), with its class names and
    preprocessing attached."""
    weights = resolve(str(ref))
    return with_inference_meta(weights.build(), weights)


def open_backend(ref: str | Path, device: str | torch.device = "cpu") -> TorchBackend | OnnxBackend:
    """The backend for ``ref``: onnxruntime for ``.onnx`` files, PyTorch for everything else."""
    if str(ref).endswith(".onnx"):
        if not Path(ref).is_file():
            raise CheckpointError(f"{ref}: no such ONNX file")
        return OnnxBackend(ref)
    return TorchBackend(load_model_for_inference(ref), device=device, name=str(ref))
