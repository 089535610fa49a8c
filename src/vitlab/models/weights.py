"""Saving, loading and checking model weights.

Our format is safetensors with the model's family and config in the metadata, so a file rebuilds its model
without pickle (``load_model``). ``load_weights`` is the one place where any state dict (ours, converted from the
official checkpoints, timm or Hugging Face) meets a model: it names missing, unexpected and mis-shaped keys,
rejects non-finite values and lets the model adapt position embeddings to its own grid.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.models.registry import build_from_config

FORMAT_KEY = "vitlab.format"
FORMAT_VERSION = "1"
# What inference needs besides the weights, kept in the metadata so that prediction needs no config. Files
# written before these keys existed simply lack them; readers fall back to the model's config.
CLASSES_KEY = "vitlab.classes"  # JSON list of class names, index = logit
PREPROCESSING_KEY = "vitlab.preprocessing"  # JSON object, see vitlab.data.transforms.eval_preprocessing
INFERENCE_ATTR = "inference_meta"  # the model attribute that carries {"classes": [...], "preprocessing": {...}}


def inference_meta(model: nn.Module) -> dict[str, Any]:
    """``{"classes": [...], "preprocessing": {...}}`` attached to ``model`` (empty when none is)."""
    return dict(getattr(model, INFERENCE_ATTR, None) or {})


def set_inference_meta(model: nn.Module, *, classes: Sequence[str] | None = None,
                       preprocessing: Mapping[str, Any] | None = None) -> nn.Module:
    """Attach class names and preprocessing to ``model``; :func:`save_model` writes them into the file."""
    meta = inference_meta(model)
    if classes is not None:
        meta["classes"] = [str(c) for c in classes]
    if preprocessing is not None:
        meta["preprocessing"] = dict(preprocessing)
    setattr(model, INFERENCE_ATTR, meta)
    return model


def read_inference_meta(metadata: Mapping[str, str], source: str = "checkpoint") -> dict[str, Any]:
    """The inference metadata of a safetensors header (keys absent in older files are left out)."""
    meta: dict[str, Any] = {}
    for key, name in ((CLASSES_KEY, "classes"), (PREPROCESSING_KEY, "preprocessing")):
        if key in metadata:
            try:
                meta[name] = json.loads(metadata[key])
            except ValueError as error:
                raise CheckpointError(f"{source}: metadata {key} is not valid JSON ({error})") from None
    return meta


def model_family(model: nn.Module) -> str:
    family = getattr(model, "family", None)
    if family is None:
        raise CheckpointError(f"{type(model).__name__} is not a vitlab model (it has no 'family')")
    return family


def config_dict(model: nn.Module) -> dict[str, Any]:
    return model.config.to_dict() if hasattr(model.config, "to_dict") else dict(vars(model.config))


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> None:
    """Write the weights and the config that rebuilds the model (atomically).

    ``classes`` (the names behind the head's outputs) and ``preprocessing`` (mean, std, interpolation of the
    weights' training data) are stored when known, so that ``vitlab.weights.resolve`` can report them without
    the data set; by default they are what :func:`set_inference_meta` attached to the model.
    """
    metadata = {
        FORMAT_KEY: FORMAT_VERSION,
        "vitlab.family": model_family(model),
        "vitlab.config": json.dumps(config_dict(model)),
    }
    meta = inference_meta(model)
    classes = meta.get("classes") if classes is None else classes
    preprocessing = meta.get("preprocessing") if preprocessing is None else preprocessing
    if classes is not None:
        metadata[CLASSES_KEY] = json.dumps([str(name) for name in classes])
    if preprocessing is not None:
        metadata[PREPROCESSING_KEY] = json.dumps(dict(preprocessing))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a safetensors file; a missing or corrupt file is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for truncated / garbled files
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    return state, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file without reading its tensors (cheap even for ViT-H)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises several types for truncated / garbled files
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


def load_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild a model saved by :func:`save_model`; ``overrides`` change config fields (e.g. ``img_size=384``)."""
    state, metadata = read_safetensors(path)
    if "vitlab.config" not in metadata:
        raise CheckpointError(f"{path}: no vitlab config in the metadata (not written by vitlab.save_model)")
    fields = json.loads(metadata["vitlab.config"])
    fields.update(overrides)
    model = build_from_config(metadata["vitlab.family"], fields)
    load_weights(model, state, source=str(path))
    meta = read_inference_meta(metadata, str(path))
    if meta:
        setattr(model, INFERENCE_ATTR, meta)
    return model


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict", strict: bool = True
) -> None:
    """Load ``state`` into ``model`` after checking it fits; raise a CheckpointError that names every problem."""
    if hasattr(model, "adapt_state_dict"):
        state = model.adapt_state_dict(dict(state))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{key} (file {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
        for key in sorted(set(state) & set(expected))
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing and strict:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_short(misshaped)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    non_finite = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if non_finite:
        raise CheckpointError(f"{source} holds NaN or infinite values in {_short(non_finite)}")
    with torch.no_grad():
        for key, value in state.items():
            if key in expected:
                expected[key].copy_(value)


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")
