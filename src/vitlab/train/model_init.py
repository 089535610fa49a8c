"""The model a run starts from: a fresh architecture, or pre-trained weights prepared for fine-tuning.

Every question the engine asks about ``model.init_from`` (its channels, its image size, the loaded model) is
answered here, in one place, until the weights resolver (``vitlab.weights.resolve``) answers them all.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from vitlab.errors import CheckpointError, ConfigError
from vitlab.interop.timm import from_timm
from vitlab.models.registry import create_model
from vitlab.models.weights import load_for_finetune, load_model, save_model
from vitlab.train.evaluation import resolve_weights
from vitlab.train.mpp import mpp_num_classes


def init_in_chans(init_from: str | None) -> int | None:
    """The channels a pre-trained start expects (grey data is repeated to 3 channels for an RGB model)."""
    if not init_from:
        return None
    if init_from.startswith("timm:") or init_from.endswith(".npz"):
        return 3
    try:
        with safe_open(str(resolve_weights(init_from)), framework="pt") as handle:
            fields = json.loads((handle.metadata() or {}).get("vitlab.config", "{}"))
    except Exception:  # unreadable here: load_pretrained reports it with the file name
        return None
    return fields.get("in_chans")


def default_img_size(model_cfg: Any) -> int:
    """The image size of the model the config names (or of the pre-trained weights when it names none)."""
    with torch.device("meta"):
        if model_cfg.init_from and model_cfg.name is None:
            model = load_model(resolve_weights(model_cfg.init_from))
        else:
            model = create_model(model_cfg.name, **model_cfg.overrides)
    size = model.config.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def build_model(model_cfg: Any, *, objective: str, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """The run's model: pre-trained (``init_from``) with a new head, or a fresh one of ``model.name``."""
    if model_cfg.init_from:
        model = load_pretrained(model_cfg.init_from, name=model_cfg.name, num_classes=num_classes,
                                img_size=img_size, overrides=model_cfg.overrides)
        got = getattr(model.config, "in_chans", in_chans)
        if got != in_chans:
            raise ConfigError(f"model.init_from={model_cfg.init_from} takes {got}-channel images but the data "
                              f"gives {in_chans}; set data.in_chans={got}")
        return model
    overrides = dict(model_cfg.overrides)
    if objective == "mpp":
        if not overrides.get("mpp_classes"):
            overrides["mpp_classes"] = mpp_num_classes(in_chans)  # 512 for RGB, 8 for grey
        num_classes = 0  # no classifier to train: every parameter takes part (DDP needs that)
    return create_model(model_cfg.name, num_classes=num_classes, img_size=img_size, in_chans=in_chans,
                        **overrides)


def load_pretrained(init_from: str, *, name: str | None, num_classes: int, img_size: int,
                    overrides: dict[str, Any]) -> nn.Module:
    """The fine-tuning start (Section 3.2): pre-trained backbone, no pre-logits, zero-init head, new resolution.

    ``init_from``: our ``.safetensors`` (or a run directory), an official ``.npz``, or ``timm:NAME[@FILE]`` for
    a timm model (``FILE``: local timm weights; otherwise timm's own cache / download).
    """
    if init_from.startswith("timm:"):
        path = _timm_to_safetensors(init_from[len("timm:"):])
        return load_for_finetune(path, num_classes=num_classes, img_size=img_size, **overrides)
    path = resolve_weights(init_from)
    return load_for_finetune(path, num_classes=num_classes, img_size=img_size,
                             model=name if path.suffix == ".npz" else None, **overrides)


def _timm_to_safetensors(spec: str) -> Path:
    """Convert a timm model's weights to our format in a temporary file."""
    import timm  # heavy: imported only for timm: references

    name, _, file = spec.partition("@")
    kwargs: dict[str, Any] = {"pretrained": True, "num_classes": 0}  # the head is replaced anyway
    if file:
        kwargs["pretrained_cfg_overlay"] = {"file": file}
    try:
        timm_model = timm.create_model(name, **kwargs)
    except Exception as error:  # timm raises RuntimeError / HF hub errors when weights cannot be found
        raise CheckpointError(f"model.init_from=timm:{spec}: timm could not load it ({error})") from None
    ours = from_timm(timm_model)
    path = Path(tempfile.mkdtemp(prefix="vitlab-timm-")) / f"{name}.safetensors"
    save_model(ours, path)
    return path
