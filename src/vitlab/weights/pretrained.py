"""``vitlab.create_model(name, pretrained=...)``: a named model with published, remote or local weights.

``pretrained`` is a catalogue tag (``"augreg_i21k"``; ``True`` picks the model's default pre-training), a
``pretrained:MODEL.TAG`` reference, an ``http(s)://`` / ``file://`` URL or any other weights reference; all of them
are read by the one resolver (:func:`vitlab.weights.resolve`).
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from vitlab.models.registry import create_model as _build_named
from vitlab.models.weights import set_inference_meta
from vitlab.weights import catalog
from vitlab.weights.remote import PRETRAINED_PREFIX, is_remote
from vitlab.weights.resolver import WeightsRef, resolve


def pretrained_reference(name: str, pretrained: str | bool) -> str:
    """The weights reference ``pretrained`` stands for: a catalogue tag becomes ``pretrained:MODEL.TAG``."""
    if pretrained is True or (isinstance(pretrained, str) and not is_remote(pretrained) and ":" not in pretrained
                              and not os.path.exists(pretrained) and "/" not in pretrained):
        return f"{PRETRAINED_PREFIX}{catalog.lookup(name, pretrained).name}"
    return str(pretrained)


def with_inference_meta(model: nn.Module, ref: WeightsRef) -> nn.Module:
    """Attach what the reference knows about classes and preprocessing (prediction reads it from the model)."""
    classes = list(ref.classes) if isinstance(ref.classes, tuple) and \
        len(ref.classes) == getattr(model.config, "num_classes", -1) else None
    return set_inference_meta(model, classes=classes,
                              preprocessing=dict(ref.preprocessing) if ref.preprocessing else None)


def create_model(name: str, *, pretrained: str | bool | None = None, num_classes: int | None = None,
                 img_size: int | tuple[int, int] | None = None, in_chans: int = 3, **overrides: Any) -> nn.Module:
    """A named model, random (``pretrained=None``) or with published or remote weights.

    With ``num_classes`` other than the file's, the backbone is loaded and a new zero-initialised head added (the
    paper's transfer set-up); ``img_size`` interpolates the position embeddings. The architecture is the file's
    (``name`` picks the catalogue entry), so a file of another depth or width loads as what it is.
    """
    if pretrained is None or pretrained is False:
        return _build_named(name, num_classes=num_classes, img_size=img_size, in_chans=in_chans, **overrides)
    ref = resolve(pretrained_reference(name, pretrained))
    if num_classes is not None and num_classes != ref.num_classes:
        model = ref.build(num_classes=num_classes, img_size=img_size, **overrides)
        return set_inference_meta(model, preprocessing=dict(ref.preprocessing) if ref.preprocessing else None)
    return with_inference_meta(ref.build(img_size=img_size, **overrides), ref)
