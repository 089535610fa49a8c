"""A study of the paper as data: which runs to train, how to evaluate them, which claims to check.

A study preset (``src/vitlab/studies/presets/NAME.yaml``) names a base pre-training preset, the model variants as
config overrides, a grid (subset sizes, step budgets or learning rates, by ``kind``), the training seeds and the
evaluation. Every (variant, grid value, seed) is an ordinary run directory under ``OUT/runs/``, so a killed study
resumes point by point. ``quick`` holds the study keys that ``--quick`` replaces for a first look.

Kinds and the paper's study each reproduces:

* ``data_size`` (Figures 3-4): models pre-trained on nested subsets of the pre-training set, one budget rule for
  every subset size (``budget``), then few-shot linear probes (and optionally fine-tuning) on a downstream set.
* ``scaling`` (Figure 5): several models and families at several step budgets, placed by pre-training compute.
* ``posemb`` (Table 8): the same ViT with each kind of position embedding.
* ``head`` (Figure 9): class token vs global average pooling over a learning-rate grid (``lrs``).
* ``selfsup`` (Section 4.6): masked patch prediction then fine-tuning vs scratch vs supervised pre-training.
* ``learned`` (Figure 7): mean attention distance by depth and position-embedding similarity of trained ViTs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from vitlab.errors import ConfigError

PRESET_PACKAGE = "vitlab.studies.presets"
KINDS = ("data_size", "scaling", "posemb", "head", "selfsup", "learned")
# The key of the grid each kind walks (None: one point per variant and seed).
GRID_KEYS = {"data_size": "sizes", "scaling": "budgets", "head": "lrs"}


@dataclass
class Evaluation:
    """How each pre-trained model is measured.

    Few-shot linear regression on the frozen representation (the paper's Figures 4-5 and Table 8 use 5-shot);
    ``finetune`` (a fine-tuning preset and overrides, e.g. ``{preset: digits-finetune, overrides: [...]}``) adds
    the fine-tuned test accuracy; ``inspect_images`` > 0 measures attention distances and position-embedding
    similarity on that many test images of the pre-training set (Figure 7).
    """

    dataset: str = "digits"
    train_split: str = "train"
    test_split: str = "test"
    shots: list[int] = field(default_factory=lambda: [5])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # few-shot draws per trained model
    representation: str = "pre_logits"
    img_size: Optional[int] = None  # None: the model's own resolution
    test_limit: Optional[int] = None
    fewshot: bool = True
    finetune: Optional[dict[str, Any]] = None  # {preset: NAME, overrides: [key=value, ...]}
    inspect_images: int = 0


@dataclass
class Budget:
    """One budget rule for every pre-training subset size (data-size study): ``epochs`` passes over the subset,
    but at least ``min_steps`` (a small subset still gets enough updates to leave chance level) and at most
    ``max_steps``. The same rule applies to every model, so none is favoured."""

    epochs: float = 10.0
    min_steps: int = 1
    max_steps: Optional[int] = None

    def steps(self, size: int, batch_size: int) -> int:
        steps = max(self.min_steps, math.ceil(self.epochs * size / batch_size))
        return min(steps, self.max_steps) if self.max_steps else steps


@dataclass
class Variant:
    """One curve of a study: config overrides, the family it belongs to (ViT, BiT, hybrid: the scaling study
    compares families) and whether it is pre-trained (the self-supervision study's scratch arm is not)."""

    overrides: list[str] = field(default_factory=list)
    family: str = ""
    pretrain: bool = True


@dataclass
class Study:
    kind: str = "data_size"
    title: str = ""  # what it reproduces, for `vitlab study --list`
    base: str = "fmnist-vit-tiny"  # pre-training preset every point starts from
    overrides: list[str] = field(default_factory=list)  # applied to every point
    models: dict[str, Variant] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # data_size: pre-training subset sizes
    budget: Optional[Budget] = None  # data_size: steps per subset size (None: the base preset's steps)
    budgets: list[int] = field(default_factory=list)  # scaling: optimiser steps per point
    lrs: list[float] = field(default_factory=list)  # head: learning rates
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds: one run per seed per point
    subset_seed: int = 0
    metric: str = "5-shot"  # the number the claims read: "K-shot", "finetune", "pretrain"
    tolerance: float = 0.01  # "close" claims: accuracies within this (a fraction) count as equal
    quick: dict[str, Any] = field(default_factory=dict)  # study keys --quick replaces
    evaluation: Evaluation = field(default_factory=Evaluation)

    @property
    def grid(self) -> list[Any]:
        key = GRID_KEYS.get(self.kind)
        return list(getattr(self, key)) if key else [None]

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"study kind={self.kind!r} is unknown; expected one of {', '.join(KINDS)}")
        if not self.models:
            raise ConfigError("a study needs at least one entry under 'models' (label: [overrides])")
        if not self.seeds:
            raise ConfigError("a study needs at least one training seed under 'seeds'")
        key = GRID_KEYS.get(self.kind)
        if key and (not getattr(self, key) or min(getattr(self, key)) <= 0):
            raise ConfigError(f"a {self.kind} study needs positive '{key}', got {getattr(self, key)}")
        needs = {"selfsup": "finetune", "learned": "inspect_images"}.get(self.kind)
        if needs and not getattr(self.evaluation, needs):
            raise ConfigError(f"a {self.kind} study needs evaluation.{needs}")
        families = {v.family.lower() for v in self.models.values()}
        if self.kind in ("data_size", "scaling") and not {"vit", "bit"} <= families:
            raise ConfigError(f"a {self.kind} study compares families: give its models a 'family' of ViT and BiT "
                              f"(and optionally hybrid), got {sorted(families)}")
        if self.evaluation.finetune is not None:
            unknown = sorted(set(self.evaluation.finetune) - {"preset", "overrides"})
            if unknown or "preset" not in self.evaluation.finetune:
                raise ConfigError(f"evaluation.finetune needs 'preset' (and may have 'overrides'), got {unknown}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def load_study(name_or_path: str, overrides: dict[str, Any] | None = None, quick: bool = False) -> Study:
    """A study from a preset name (``data-size-fmnist``) or a YAML file; ``quick`` applies its ``quick`` keys, then
    ``overrides`` (top-level study keys) apply; unknown keys are named."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, origin = path.read_text(), str(path)
    else:
        resource = resources.files(PRESET_PACKAGE) / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(f"study {name_or_path!r} is neither a YAML file nor a preset ({', '.join(preset_names())})")
        text, origin = resource.read_text(), f"preset {name_or_path}"
    tree = yaml.safe_load(text) or {}
    if quick:
        tree.update(tree.get("quick") or {})
    tree.update(overrides or {})
    return study_from_dict(tree, origin)


def study_from_dict(tree: dict[str, Any], origin: str = "study") -> Study:
    tree = dict(tree)
    evaluation = tree.pop("evaluation", {}) or {}
    models = tree.pop("models", {}) or {}
    budget = tree.pop("budget", None)
    valid = {f.name for f in dataclasses.fields(Study)}
    unknown = sorted(set(tree) - valid)
    unknown += [f"evaluation.{k}" for k in sorted(set(evaluation) - {f.name for f in dataclasses.fields(Evaluation)})]
    if budget is not None:
        unknown += [f"budget.{k}" for k in sorted(set(budget) - {f.name for f in dataclasses.fields(Budget)})]
    if unknown:
        raise ConfigError(f"{origin}: unknown study key(s) {', '.join(unknown)}")
    variants = {str(label): _variant(str(label), entry, origin) for label, entry in models.items()}
    study = Study(**tree, models=variants, evaluation=Evaluation(**evaluation),
                  budget=None if budget is None else Budget(**budget))
    study.validate()
    return study


def _variant(label: str, entry: Any, origin: str) -> Variant:
    """A ``models`` entry: a list of overrides, or ``{overrides: [...], family: NAME, pretrain: bool}``."""
    if entry is None or isinstance(entry, list):
        return Variant(overrides=[str(o) for o in entry or []], family=label)
    if not isinstance(entry, dict) or set(entry) - {"overrides", "family", "pretrain"}:
        raise ConfigError(f"{origin}: models.{label} must be a list of overrides or {{overrides, family, pretrain}}")
    return Variant(overrides=[str(o) for o in entry.get("overrides") or []],
                   family=str(entry.get("family", label)), pretrain=bool(entry.get("pretrain", True)))


def describe_presets() -> list[tuple[str, str, str]]:
    """``(name, kind, title)`` of every shipped study preset, for ``vitlab study --list``."""
    rows = []
    for name in preset_names():
        study = load_study(name)
        rows.append((name, study.kind, study.title))
    return rows
