"""The paper's training recipes as data (Appendix B.1, Tables 3 and 4).

The YAML presets in ``vitlab/configs`` spell these out run by run; ``tests/test_train_recipes.py`` checks that
every paper preset agrees with the tables here, so a number is changed in one place and the test shows where
the presets disagree. Nothing in the engine branches on a model or dataset name: it reads these values through
the config.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainRecipe:
    """One row of Table 3 plus the settings the text gives for all rows."""

    epochs: float
    lr: float
    schedule: str  # "linear" | "cosine"
    weight_decay: float  # decoupled, multiplied by the learning rate (see config.OptimSection)
    dropout: float
    loss: str = "sigmoid"  # sigmoid CE on JFT and ImageNet-21k (multi-label); softmax on ImageNet
    end_lr: float = 0.0
    batch_size: int = 4096  # Appendix B.1: all models, batch 4096
    warmup_steps: int = 10_000  # Appendix B.1: linear warm-up of 10k steps
    img_size: int = 224
    clip_norm: float = 1.0  # "gradient clipping at global norm 1"
    betas: tuple[float, float] = (0.9, 0.999)  # Adam, Appendix D.1


# Table 3: keyed by (pre-training dataset, model). "7/14" epochs in the table: 7 is used here (Table 2's
# ViT-L/16 and ViT-H/14 ran 14; override `train.epochs=14`). ImageNet-21k decays linearly to 1e-5 (official code).
PRETRAIN: dict[tuple[str, str], PretrainRecipe] = {
    ("jft", "vit_b16"): PretrainRecipe(epochs=7, lr=8e-4, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("jft", "vit_b32"): PretrainRecipe(epochs=7, lr=8e-4, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("jft", "vit_l32"): PretrainRecipe(epochs=7, lr=6e-4, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("jft", "vit_l16"): PretrainRecipe(epochs=7, lr=4e-4, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("jft", "vit_h14"): PretrainRecipe(epochs=14, lr=3e-4, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("jft", "bit_r50x1"): PretrainRecipe(epochs=7, lr=1e-3, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("jft", "bit_r152x2"): PretrainRecipe(epochs=7, lr=6e-4, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("jft", "r50_vit_b16"): PretrainRecipe(epochs=7, lr=8e-4, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("jft", "r50_vit_l32"): PretrainRecipe(epochs=7, lr=2e-4, schedule="linear", weight_decay=0.1, dropout=0.0),
    ("imagenet21k", "vit_b16"): PretrainRecipe(
        epochs=90, lr=1e-3, schedule="linear", weight_decay=0.03, dropout=0.1, end_lr=1e-5),
    ("imagenet21k", "vit_b32"): PretrainRecipe(
        epochs=90, lr=1e-3, schedule="linear", weight_decay=0.03, dropout=0.1, end_lr=1e-5),
    ("imagenet21k", "vit_l16"): PretrainRecipe(
        epochs=90, lr=1e-3, schedule="linear", weight_decay=0.03, dropout=0.1, end_lr=1e-5),
    ("imagenet21k", "vit_l32"): PretrainRecipe(
        epochs=90, lr=1e-3, schedule="linear", weight_decay=0.03, dropout=0.1, end_lr=1e-5),
    ("imagenet", "vit_b16"): PretrainRecipe(
        epochs=300, lr=3e-3, schedule="cosine", weight_decay=0.3, dropout=0.1, loss="softmax"),
    ("imagenet", "vit_b32"): PretrainRecipe(
        epochs=300, lr=3e-3, schedule="cosine", weight_decay=0.3, dropout=0.1, loss="softmax"),
    ("imagenet", "vit_l16"): PretrainRecipe(
        epochs=300, lr=3e-3, schedule="cosine", weight_decay=0.3, dropout=0.1, loss="softmax"),
    ("imagenet", "vit_l32"): PretrainRecipe(
        epochs=300, lr=3e-3, schedule="cosine", weight_decay=0.3, dropout=0.1, loss="softmax"),
}


@dataclass(frozen=True)
class FinetuneRecipe:
    """One row of Table 4 plus the fine-tuning settings shared by all rows (Appendix B.1.1)."""

    steps: int
    lrs: tuple[float, ...]  # the learning-rate grid; the dev split picks one
    batch_size: int = 512
    warmup_steps: int = 500  # official code (vit_jax/configs/common.py)
    schedule: str = "cosine"
    momentum: float = 0.9  # SGD
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    img_size: int = 384


_SMALL_GRID = (0.001, 0.003, 0.01, 0.03)

# Table 4. Pets and Flowers run 500 steps in total, so the official 500 warm-up steps would never leave the
# warm-up; their presets warm up for 100 steps instead (our choice, noted in the presets).
FINETUNE: dict[str, FinetuneRecipe] = {
    "imagenet": FinetuneRecipe(steps=20_000, lrs=(0.003, 0.01, 0.03, 0.06)),
    "cifar100": FinetuneRecipe(steps=10_000, lrs=_SMALL_GRID),
    "cifar10": FinetuneRecipe(steps=10_000, lrs=_SMALL_GRID),
    "pets": FinetuneRecipe(steps=500, lrs=_SMALL_GRID, warmup_steps=100),
    "flowers102": FinetuneRecipe(steps=500, lrs=_SMALL_GRID, warmup_steps=100),
    "vtab": FinetuneRecipe(steps=2500, lrs=(0.01,)),
}

# Appendix B.1.1: the dev split held out of the training set to pick the learning rate.
DEV_FRACTION: dict[str, float] = {
    "pets": 0.10,
    "flowers102": 0.10,
    "cifar10": 0.02,
    "cifar100": 0.02,
    "imagenet": 0.01,
}
DEFAULT_DEV_FRACTION = 0.10  # datasets the paper does not list

# Polyak averaging used for the Table 2 fine-tuning runs (Appendix B.1.1).
POLYAK_DECAY = 0.9999


def dev_fraction(dataset: str) -> float:
    """The paper's dev-split share for ``dataset`` (10% for datasets it does not name)."""
    return DEV_FRACTION.get(dataset, DEFAULT_DEV_FRACTION)
