"""Weights references: one resolver for every checkpoint a command accepts, the download cache (``download``)
and the catalogue of published checkpoints (``catalog``, ``vitlab weights``).

    from vitlab.weights import resolve
    ref = resolve("runs/fmnist")            # or .safetensors, .npz, timm:NAME, hf:NAME, pretrained:MODEL.TAG, URL
    ref.kind, ref.family, ref.in_chans, ref.img_size, ref.classes, ref.preprocessing
    model = ref.build()                     # the checkpoint's own model and head
    model = ref.build(num_classes=10, img_size=384)   # the paper's fine-tuning start
"""
from __future__ import annotations

from vitlab.weights.resolver import WeightsRef, kind_of, resolve

__all__ = ["WeightsRef", "kind_of", "resolve"]
