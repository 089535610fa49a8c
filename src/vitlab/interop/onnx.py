"""Export a vitlab model to ONNX for inference runtimes, checked against onnxruntime as it is written.

The graph takes ``images`` float32 ``[batch, C, H, W]`` (the batch axis dynamic, H and W the model's size,
pixels already preprocessed) and returns ``logits [batch, K]``. The class names and preprocessing travel in the
file's metadata properties under the same keys as in vitlab's safetensors files, so ``vitlab predict`` runs an
``.onnx`` with no other file. Export needs the ``[export]`` extra (onnx, onnxruntime, onnxscript).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.models.weights import CLASSES_KEY, PREPROCESSING_KEY, atomic_write, inference_meta

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "torchscript", "dynamo")
OPSET = 18  # the tracing exporter's opset: LayerNorm and GroupNorm as single ops where onnxruntime has them
CHECK_BATCHES = (1, 7)  # two batch sizes run through the one exported file
DEFAULT_TOLERANCE = 1e-3  # max abs logit difference above which the export is refused (fp32 parity is ~1e-6)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduces PyTorch."""

    path: Path
    max_abs_diff: float
    batches: tuple[int, ...]
    opset: int


def _input_size(model: nn.Module) -> tuple[int, int, int]:
    cfg = model.config
    size = getattr(cfg, "img_size", 224)
    h, w = (size, size) if isinstance(size, int) else size
    return int(getattr(cfg, "in_chans", 3)), int(h), int(w)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, preprocessing: dict[str, Any] | None = None,
                classes: list[str] | None = None, check: bool = True, exporter: str = "auto",
                tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> ExportReport:
    """Write ``model`` as ONNX to ``path`` (atomically) and compare onnxruntime's logits with PyTorch's.

    ``exporter``: ``"torchscript"`` (torch's tracing exporter: seconds for a ViT-B), ``"dynamo"`` (``torch.export``
    + onnxscript: several times slower on CPU, the one torch keeps long-term) or ``"auto"`` (tracing while torch
    still ships it, else dynamo). Both give the same graph semantics; parity is checked either way.
    """
    if exporter not in EXPORTERS:
        raise CheckpointError(f"exporter={exporter!r}; expected one of {', '.join(EXPORTERS)}")
    try:
        import onnx
    except ImportError as error:
        raise CheckpointError("ONNX export needs the [export] extra: pip install 'vitlab[export]'") from error
    model = model.eval().cpu().float()
    chans, h, w = _input_size(model)
    example = torch.randn(2, chans, h, w, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory(prefix="vitlab-onnx-") as tmp:
        raw = Path(tmp) / "model.onnx"
        _export(model, example, raw, exporter)
        proto = onnx.load(str(raw))
    meta = inference_meta(model)
    classes = meta.get("classes") if classes is None else classes
    preprocessing = meta.get("preprocessing") if preprocessing is None else preprocessing
    if preprocessing is None:
        preprocessing = {"img_size": [h, w], "resize": "bilinear", "mean": [0.5] * chans, "std": [0.5] * chans,
                         "channels": chans, "in_chans": chans}
    props = {PREPROCESSING_KEY: json.dumps(preprocessing), "vitlab.model": type(model).__name__}
    if classes is not None:
        props[CLASSES_KEY] = json.dumps([str(c) for c in classes])
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    diff = check_onnx(model, path, seed=seed) if check else float("nan")
    if check and not diff <= tolerance:
        Path(path).unlink(missing_ok=True)
        raise CheckpointError(f"ONNX export of {type(model).__name__}: onnxruntime's logits differ from PyTorch's "
                              f"by {diff:.2e} (tolerance {tolerance:.0e}); file not written")
    return ExportReport(Path(path), diff, CHECK_BATCHES if check else (), opset)


def _export(model: nn.Module, example: torch.Tensor, out: Path, exporter: str) -> None:
    """Run one of torch's exporters with a dynamic batch axis; any failure is one CheckpointError line."""
    names = dict(input_names=["images"], output_names=["logits"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on shape checks, the tracing exporter's deprecation
            if exporter in ("auto", "torchscript"):
                try:
                    torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=OPSET,
                                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, **names)
                    return
                except (TypeError, NotImplementedError, RuntimeError):
                    if exporter == "torchscript":
                        raise
                    log.info("the tracing ONNX exporter is unavailable; using torch.export (dynamo)")
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},), **names)
            program.save(str(out))
    except Exception as error:  # exporter failures are many types; name the model and the first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"ONNX export of {type(model).__name__} failed: {first}") from None


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | os.PathLike, *, batches: tuple[int, ...] = CHECK_BATCHES,
               seed: int = 0) -> float:
    """Max abs difference of logits between onnxruntime on ``path`` and ``model``, over the given batch sizes."""
    import onnxruntime as ort  # optional: the [export] extra

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    chans, h, w = _input_size(model)
    generator = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for n in batches:
        x = torch.randn(n, chans, h, w, generator=generator)
        ours = model(x).float().numpy()
        theirs = session.run(None, {name: x.numpy()})[0]
        if theirs.shape != ours.shape:
            raise CheckpointError(f"{path}: onnxruntime gave logits {theirs.shape} for batch {n}, expected {ours.shape}")
        worst = max(worst, float(np.abs(theirs - ours).max()))
    return worst
