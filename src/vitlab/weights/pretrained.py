"""``vitlab.create_model(name, pretrained=...)``: a named model with published, remote or local weights.

``pretrained`` is a catalogue tag, ``pretrained:MODEL.TAG``, a URL (:mod:`vitlab.weights.remote` fetches it) or
a path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from vitlab.errors import CheckpointError
from vitlab.interop.official import load_npz_any
from vitlab.models.registry import build_from_config
from vitlab.models.registry import create_model as _build_named
from vitlab.models.weights import (config_dict, inference_meta, load_for_finetune, load_model, load_weights,
                                   model_family, set_inference_meta)
from vitlab.weights import catalog
from vitlab.weights.remote import PRETRAINED_PREFIX, fetch_reference, is_remote


def _load_file(path: Path) -> nn.Module:
    """The model a weights file describes (an official file's architecture is read off its keys and shapes)."""
    if path.suffix == ".npz":
        return load_npz_any(path)
    if path.suffix == ".safetensors":
        return load_model(path)
    raise CheckpointError(f"{path}: expected an official .npz or a vitlab .safetensors weights file")


def _official_preprocessing(model: nn.Module) -> dict[str, Any]:
    """The official checkpoints' input: RGB, bilinear resize to the model's size, pixels in [-1, 1]."""
    size = getattr(model.config, "img_size", 224)
    size = [size, size] if isinstance(size, int) else list(size)
    chans = int(getattr(model.config, "in_chans", 3))
    return {"img_size": size, "resize": "bilinear", "mean": [0.5] * chans, "std": [0.5] * chans,
            "channels": chans, "in_chans": chans}


def create_model(name: str, *, pretrained: str | bool | None = None, num_classes: int | None = None,
                 img_size: int | tuple[int, int] | None = None, in_chans: int = 3, **overrides: Any) -> nn.Module:
    """A named model, random (``pretrained=None``) or with published or remote weights.

    ``pretrained`` is a catalogue tag (``"augreg_i21k"``; ``True`` picks the model's default pre-training), a
    ``pretrained:MODEL.TAG`` reference, an ``http(s)://`` / ``file://`` URL or a local path. With ``num_classes``
    other than the file's, the backbone is loaded and a new zero-initialised head added (the paper's transfer
    set-up); ``img_size`` interpolates the position embeddings. The architecture is the file's (``name`` picks
    the catalogue entry), so a file of another depth or width still loads as what it is.
    """
    if pretrained is None or pretrained is False:
        return _build_named(name, num_classes=num_classes, img_size=img_size, in_chans=in_chans, **overrides)
    if pretrained is True or (isinstance(pretrained, str) and not is_remote(pretrained)
                              and not os.path.exists(pretrained) and "/" not in pretrained):
        ref = f"{PRETRAINED_PREFIX}{catalog.lookup(name, pretrained).name}"
    else:
        ref = str(pretrained)
    path, _ = fetch_reference(ref)
    if in_chans != 3 and path.suffix == ".npz":
        raise CheckpointError(f"{ref}: official checkpoints take 3-channel images, not in_chans={in_chans}")
    source = _load_file(path)
    file_classes = getattr(source.config, "num_classes", None)
    if num_classes is not None and num_classes != file_classes:
        model = load_for_finetune(path, num_classes=num_classes, img_size=img_size, **overrides)
        meta = inference_meta(source)
        if meta.get("preprocessing"):
            set_inference_meta(model, preprocessing=dict(meta["preprocessing"]))
        return model
    if img_size is not None or overrides:
        model = _rebuild(source, img_size=img_size, **overrides)
    else:
        model = source
    if not inference_meta(model).get("preprocessing"):
        set_inference_meta(model, preprocessing=_official_preprocessing(model))
    return model


def _rebuild(source: nn.Module, **changes: Any) -> nn.Module:
    """``source``'s weights in a model whose config differs by ``changes`` (e.g. another ``img_size``)."""
    fields = config_dict(source)
    fields.update({k: v for k, v in changes.items() if v is not None})
    model = build_from_config(model_family(source), fields)
    load_weights(model, source.state_dict(), source="pretrained weights")
    meta = inference_meta(source)
    if meta.get("classes"):
        set_inference_meta(model, classes=meta["classes"])
    return model
