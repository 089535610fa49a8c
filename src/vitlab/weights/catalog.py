"""Every published checkpoint vitlab knows, as data: ``pretrained:NAME.TAG`` -> URL, resolution, classes, accuracy.

Sources (read for facts only):
  [ViT]    google-research/vision_transformer README, "Available ViT models": buckets
           gs://vit_models/imagenet21k (pre-trained on ImageNet-21k, with the pre-logits layer) and
           gs://vit_models/imagenet21k+imagenet2012 (fine-tuned on ImageNet at 384 px; "-224" files at 224 px,
           "expected to achieve 81.2% and 82.7% top-1").
  [T5]     the ViT paper (Dosovitskiy et al. 2021), Table 5: ImageNet top-1 after ImageNet-21k pre-training,
           ViT-B/16 83.97, ViT-L/16 85.15.
  [AugReg] the same README, table of recommended AugReg checkpoints ("How to train your ViT?", Steiner et al.
           2021): gs://vit_models/augreg file names, fine-tuned on ImageNet at 384 px, with their ImageNet top-1.
  [BiT]    google-research/big_transfer README: https://storage.googleapis.com/bit_models/BiT-{S,M}-R*.npz,
           BiT-S on ILSVRC-2012, BiT-M on ImageNet-21k, "-ILSVRC2012" = BiT-M fine-tuned on ILSVRC-2012;
           architectures R50x1, R101x1, R50x3, R101x3, R152x4 (+ R152x2, BiT-M only). Fine-tuning resolution
           480 px is BiT-HyperRule's for ImageNet-sized sets (bit_hyperrule.py).
The publishers give no SHA-256 for these files: vitlab records the hash at first download
(:mod:`vitlab.weights.download`) and refuses a later copy whose bytes differ.

Names are ``MODEL.TAG`` with vitlab's model names (``vitlab models``). Tags: ``i21k`` (ImageNet-21k pre-training),
``i21k_ft_in1k`` (then ImageNet-1k fine-tuning, 384 px), ``i21k_ft_in1k_224``, ``augreg_i21k``,
``augreg_i21k_ft_in1k``, ``bit_m`` (ImageNet-21k), ``bit_s`` (ILSVRC-2012), ``bit_m_ft_in1k``.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import torch

from vitlab.errors import ConfigError
from vitlab.models.registry import build_from_config, canonical_name, model_spec

GCS = "https://storage.googleapis.com/"
I21K_CLASSES = 21843  # ImageNet-21k as the official checkpoints' heads have it
IN1K_CLASSES = 1000


@dataclass(frozen=True)
class Checkpoint:
    """One published file."""

    model: str  # vitlab model name
    tag: str
    url: str
    data: str  # what it was trained on
    resolution: int  # the pixels it was trained / fine-tuned at
    num_classes: int
    top1: float | None  # ImageNet-1k top-1 (%) as published, None where none is
    source: str  # key of the module doc's source list
    representation_size: int | None = None  # pre-logits width where the file has that layer
    sha256: str | None = None  # known hash (none is published for these files)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    def num_params(self) -> int:
        """Parameters of the model the file fills (built on the meta device: no memory, no time)."""
        family, fields = model_spec(self.model)
        fields.update(num_classes=self.num_classes, img_size=self.resolution, in_chans=3, **self.overrides)
        if self.representation_size and family == "vit":
            fields["representation_size"] = self.representation_size
        with torch.device("meta"):
            model = build_from_config(family, fields)
        return sum(p.numel() for p in model.parameters())


def _gcs(bucket_path: str) -> str:
    return GCS + urllib.parse.quote(bucket_path)  # "+" becomes %2B, as the bucket's own links spell it


def _vit_original() -> list[Checkpoint]:
    rows = []
    # (our model, official file stem, pre-logits width, top-1 of the 384 px fine-tune) [ViT], [T5]
    for model, stem, width, top1 in (("vit_b16", "ViT-B_16", 768, 83.97), ("vit_b32", "ViT-B_32", 768, None),
                                      ("vit_l16", "ViT-L_16", 1024, 85.15), ("vit_l32", "ViT-L_32", 1024, None),
                                      ("vit_h14", "ViT-H_14", 1280, None), ("r50_vit_b16", "R50+ViT-B_16", 768, None)):
        source = "ViT" if top1 is None else "ViT, T5"
        rows.append(Checkpoint(model, "i21k", _gcs(f"vit_models/imagenet21k/{stem}.npz"), "ImageNet-21k", 224,
                               I21K_CLASSES, None, "ViT", representation_size=width))
        if model == "vit_h14":  # its fine-tuning resolution is not documented (384 is not a multiple of 14)
            continue
        rows.append(Checkpoint(model, "i21k_ft_in1k", _gcs(f"vit_models/imagenet21k+imagenet2012/{stem}.npz"),
                               "ImageNet-21k -> ImageNet-1k", 384, IN1K_CLASSES, top1, source))
    for model, stem, top1 in (("vit_b16", "ViT-B_16", 81.2), ("vit_l16", "ViT-L_16", 82.7)):  # [ViT] "-224"
        rows.append(Checkpoint(model, "i21k_ft_in1k_224", _gcs(f"vit_models/imagenet21k+imagenet2012/{stem}-224.npz"),
                               "ImageNet-21k -> ImageNet-1k", 224, IN1K_CLASSES, top1, "ViT"))
    return rows


# [AugReg] recommended checkpoints: (our model, upstream file stem, fine-tune suffix, ImageNet top-1 at 384 px)
AUGREG = (
    ("vit_l16", "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0", "imagenet2012-steps_20k-lr_0.01-res_384", 85.59),
    ("vit_b16", "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0", "imagenet2012-steps_20k-lr_0.03-res_384", 85.49),
    ("vit_s16", "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", "imagenet2012-steps_20k-lr_0.03-res_384", 83.73),
    ("r50_vit_l32", "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1", "imagenet2012-steps_20k-lr_0.01-res_384", 85.99),
    ("vit_ti16", "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "imagenet2012-steps_20k-lr_0.03-res_384", 78.22),
    ("vit_b32", "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", "imagenet2012-steps_20k-lr_0.01-res_384", 83.59),
    ("vit_s32", "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0", "imagenet2012-steps_20k-lr_0.01-res_384", 79.58),
)


def _augreg() -> list[Checkpoint]:
    rows = []
    for model, stem, finetune, top1 in AUGREG:
        rows.append(Checkpoint(model, "augreg_i21k", _gcs(f"vit_models/augreg/{stem}.npz"), "ImageNet-21k (AugReg)",
                               224, I21K_CLASSES, None, "AugReg"))
        rows.append(Checkpoint(model, "augreg_i21k_ft_in1k", _gcs(f"vit_models/augreg/{stem}--{finetune}.npz"),
                               "ImageNet-21k (AugReg) -> ImageNet-1k", 384, IN1K_CLASSES, top1, "AugReg"))
    return rows


def _bit() -> list[Checkpoint]:
    rows = []
    for arch in ("R50x1", "R101x1", "R50x3", "R101x3", "R152x2", "R152x4"):
        model = f"bit_{arch.lower()}"
        rows.append(Checkpoint(model, "bit_m", GCS + f"bit_models/BiT-M-{arch}.npz", "ImageNet-21k", 224,
                               I21K_CLASSES, None, "BiT"))
        rows.append(Checkpoint(model, "bit_m_ft_in1k", GCS + f"bit_models/BiT-M-{arch}-ILSVRC2012.npz",
                               "ImageNet-21k -> ILSVRC-2012", 480, IN1K_CLASSES, None, "BiT"))
        if arch != "R152x2":  # released for BiT-M only
            rows.append(Checkpoint(model, "bit_s", GCS + f"bit_models/BiT-S-{arch}.npz", "ILSVRC-2012", 224,
                                   IN1K_CLASSES, None, "BiT"))
    return rows


CATALOG: dict[str, Checkpoint] = {c.name: c for c in _vit_original() + _augreg() + _bit()}

# The tag `pretrained=True` picks: the best-documented ImageNet-21k pre-training of each model.
DEFAULT_TAGS = ("augreg_i21k", "i21k", "bit_m")


def list_checkpoints() -> list[Checkpoint]:
    return list(CATALOG.values())


def tags_of(model: str) -> list[str]:
    key = canonical_name(model)
    return [c.tag for c in CATALOG.values() if c.model == key]


def lookup(name: str, tag: str | bool | None = None) -> Checkpoint:
    """The entry for ``MODEL.TAG`` (or ``MODEL`` with ``tag``; ``tag=True`` picks the default pre-training)."""
    if tag is None or tag is False:
        model, _, tag = name.rpartition(".") if "." in name else (name, "", "")
    else:
        model = name
    model = canonical_name(model)
    tags = tags_of(model)
    if tag is True or tag == "":
        for default in DEFAULT_TAGS:
            if default in tags:
                tag = default
                break
    key = f"{model}.{tag}"
    if key not in CATALOG:
        hint = f"published tags of {model}: {', '.join(tags)}" if tags else "see `vitlab weights` for the list"
        raise ConfigError(f"no published checkpoint {key!r}; {hint}")
    return CATALOG[key]
