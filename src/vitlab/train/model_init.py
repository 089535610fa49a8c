"""The model a run starts from: a fresh architecture, or pre-trained weights prepared for fine-tuning.

Every question the engine asks about ``model.init_from`` (its channels, its image size, the model built from it)
goes through the one weights resolver, :func:`vitlab.weights.resolve`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitlab.data.transforms import eval_preprocessing
from vitlab.errors import ConfigError
from vitlab.models.registry import create_model
from vitlab.models.specs import check_against_checkpoint, spec_of_model, split_structure
from vitlab.models.weights import set_inference_meta
from vitlab.train.mpp import mpp_num_classes
from vitlab.weights import resolve


def init_in_chans(model_cfg: Any) -> int | None:
    """The channels a pre-trained start expects (grey data is repeated to 3 channels for an RGB model)."""
    return resolve(model_cfg.init_from, model_name=model_cfg.name).in_chans if model_cfg.init_from else None


def default_img_size(model_cfg: Any) -> int:
    """The image size of the model the config names (or of the pre-trained weights when it names none)."""
    if model_cfg.init_from and model_cfg.name is None:
        return resolve(model_cfg.init_from).img_size[0]
    with torch.device("meta"):
        model = create_model(model_cfg.name, **model_cfg.overrides)
    size = model.config.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def build_model(model_cfg: Any, *, objective: str, num_classes: int, in_chans: int, img_size: int,
                classes: list[str] | None = None, source_channels: int | None = None) -> nn.Module:
    """The run's model: pre-trained (``init_from``, Section 3.2's transfer start) with a new head, or a fresh one.

    A classifier also carries what `vitlab predict` needs without a config: the class names and the preprocessing.
    """
    model = _build(model_cfg, objective=objective, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    if objective != "mpp" and classes:
        set_inference_meta(model, classes=list(classes),
                           preprocessing=eval_preprocessing(img_size, in_chans, source_channels or in_chans))
    return model


def _build(model_cfg: Any, *, objective: str, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    if model_cfg.init_from:
        # The checkpoint carries the architecture; a model.name must agree with it (never a label that lies).
        shape, others = split_structure(model_cfg.overrides)
        model = resolve(model_cfg.init_from).build(num_classes=num_classes, img_size=img_size, **others)
        check_against_checkpoint(model_cfg.name, shape, spec_of_model(model), model_cfg.init_from)
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
