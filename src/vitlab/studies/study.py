"""The paper's two studies, sized for the hardware at hand (Sections 4.3 and 4.4).

* **Data size** (Figure 4): each model is pre-trained with the same hyper-parameters on nested random subsets of the
  pre-training set (every smaller subset inside the larger), then its frozen representation is evaluated by few-shot
  linear regression on a downstream task. The paper's finding: ResNets win on small pre-training sets, ViTs overtake them
  as the data grows.
* **Scaling** (Figure 5): several models, each pre-trained with its own budget, placed by pre-training compute
  (FLOPs = 3 x forward MACs x 2 x images seen) against transfer accuracy.

A study is data: a YAML file (``study.py`` presets in ``src/vitlab/studies/presets/``) naming the base pre-training
preset, the model variants as config overrides, the subset sizes or step budgets, and the evaluation. Each point is an
ordinary run directory under ``OUT/runs/``, so a killed study resumes point by point and the runs can be inspected on
their own.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from vitlab.config import load_config
from vitlab.data import get_source
from vitlab.data.splits import nested_subsets
from vitlab.errors import ConfigError
from vitlab.evaluate.fewshot import fewshot_evaluate
from vitlab.models.flops import count_model_macs
from vitlab.models.weights import load_model
from vitlab.studies.report import write_report
from vitlab.train import pretrain

log = logging.getLogger(__name__)
PRESET_PACKAGE = "vitlab.studies.presets"


@dataclass
class Evaluation:
    """Few-shot linear evaluation of the pre-trained representation (the paper's Figure 4 uses 5-shot ImageNet)."""

    dataset: str = "digits"
    train_split: str = "train"
    test_split: str = "test"
    shots: list[int] = field(default_factory=lambda: [5])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    representation: str = "pre_logits"
    img_size: Optional[int] = None  # None: the model's own resolution
    test_limit: Optional[int] = None


@dataclass
class Study:
    kind: str = "data_size"  # "data_size" | "scaling"
    base: str = "fmnist-vit-tiny"  # pre-training preset every point starts from
    overrides: list[str] = field(default_factory=list)  # applied to every point (e.g. a shorter budget)
    # label -> config overrides; one curve per label (e.g. {"ViT": [], "ResNet": ["model.name=bit_r50x1"]})
    models: dict[str, list[str]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # data_size: pre-training subset sizes
    budgets: list[int] = field(default_factory=list)  # scaling: optimiser steps per point (x every model)
    subset_seed: int = 0
    evaluation: Evaluation = field(default_factory=Evaluation)

    def validate(self) -> None:
        if self.kind not in ("data_size", "scaling"):
            raise ConfigError(f"study kind={self.kind!r} is unknown; expected data_size or scaling")
        if not self.models:
            raise ConfigError("a study needs at least one entry under 'models' (label: [overrides])")
        if self.kind == "data_size" and (not self.sizes or min(self.sizes) < 1):
            raise ConfigError(f"a data_size study needs positive 'sizes', got {self.sizes}")
        if self.kind == "scaling" and (not self.budgets or min(self.budgets) < 1):
            raise ConfigError(f"a scaling study needs positive step 'budgets', got {self.budgets}")


def load_study(name_or_path: str, overrides: dict[str, Any] | None = None) -> Study:
    """A study from a preset name (``data-size-fmnist``) or a YAML file; unknown keys are named."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, origin = path.read_text(), str(path)
    else:
        resource = resources.files(PRESET_PACKAGE) / f"{name_or_path}.yaml"
        if not resource.is_file():
            known = sorted(p.name[:-5] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml"))
            raise ConfigError(f"study {name_or_path!r} is neither a YAML file nor a preset ({', '.join(known)})")
        text, origin = resource.read_text(), f"preset {name_or_path}"
    tree = yaml.safe_load(text) or {}
    tree.update(overrides or {})
    return study_from_dict(tree, origin)


def study_from_dict(tree: dict[str, Any], origin: str = "study") -> Study:
    tree = dict(tree)
    evaluation = tree.pop("evaluation", {}) or {}
    valid = {f.name for f in dataclasses.fields(Study)}
    unknown = sorted(set(tree) - valid)
    eval_valid = {f.name for f in dataclasses.fields(Evaluation)}
    unknown += [f"evaluation.{k}" for k in sorted(set(evaluation) - eval_valid)]
    if unknown:
        raise ConfigError(f"{origin}: unknown study key(s) {', '.join(unknown)}")
    study = Study(**tree, evaluation=Evaluation(**evaluation))
    study.models = {str(label): [str(o) for o in (ovr or [])] for label, ovr in study.models.items()}
    study.validate()
    return study


@dataclass
class Point:
    """One pre-training run of a study and what it measured."""

    label: str
    size: int  # pre-training images available
    steps: int
    run_dir: str
    pretrain_accuracy: Optional[float]
    fewshot: dict[str, float]  # "5-shot" -> mean accuracy
    images_seen: int
    pretrain_gflops: float  # training FLOPs = 3 x forward


def run_study(study: Study, out_dir: str | Path, resume: bool = True) -> list[Point]:
    """Train and evaluate every point; finished points (``point.json`` present) are reused when ``resume``."""
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(yaml.safe_dump(dataclasses.asdict(study), sort_keys=False))
    points = []
    grid = study.sizes if study.kind == "data_size" else study.budgets
    for label, model_overrides in study.models.items():
        for value in grid:
            tag = f"{_slug(label)}-{'n' if study.kind == 'data_size' else 'steps'}{value}"
            point_file = out / "runs" / tag / "point.json"
            if resume and point_file.is_file():
                points.append(Point(**json.loads(point_file.read_text())))
                continue
            cfg = load_config(study.base, study.overrides)
            if any(o.startswith("model.name=") for o in model_overrides):
                cfg.model.overrides = {}  # the base's model options belong to the base's model
            cfg = cfg.override(model_overrides)
            if study.kind == "scaling":
                cfg = cfg.override({"train.steps": value})
            points.append(_run_point(study, cfg, label, value, out / "runs" / tag, resume))
            point_file.write_text(json.dumps(dataclasses.asdict(points[-1]), indent=2))
    write_report(study, points, out)
    return points


def _run_point(study: Study, cfg, label: str, value: int, run_dir: Path, resume: bool) -> Point:
    source = get_source(cfg.data.dataset, split=cfg.data.train_split, **cfg.data.options)
    size = len(source)
    if study.kind == "data_size":
        size = min(value, len(source))
        cfg = cfg.override({"data.exclusions": str(_subset_exclusions(source, size, study, run_dir))})
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = pretrain(cfg, run_dir / "pretrain", resume=resume)
    model = load_model(run_dir / "pretrain" / "checkpoints" / "last.safetensors").eval()
    fewshot = _fewshot(model, study.evaluation)
    steps = int(summary.get("steps", cfg.train.steps or 0))
    images = steps * cfg.train.batch_size
    macs = _forward_macs(model, count_model_macs)
    return Point(
        label=label,
        size=size,
        steps=steps,
        run_dir=str(run_dir),
        pretrain_accuracy=summary.get("metrics", {}).get("test_accuracy"),
        fewshot=fewshot,
        images_seen=images,
        pretrain_gflops=3 * 2 * macs * images / 1e9,
    )


def _subset_exclusions(source, size: int, study: Study, run_dir: Path) -> Path:
    """The complement of the nested subset of ``size`` images, as an exclusion list the engine honours."""
    labels = getattr(source, "labels", None)
    kept = set(int(i) for i in nested_subsets(labels if labels is not None else len(source), [size], seed=study.subset_seed)[0])
    path = run_dir / "excluded.txt"
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(str(i) for i in range(len(source)) if i not in kept) + "\n")
    return path


def _fewshot(model, evaluation: Evaluation) -> dict[str, float]:
    train = get_source(evaluation.dataset, split=evaluation.train_split)
    test = get_source(evaluation.dataset, split=evaluation.test_split)
    report = fewshot_evaluate(
        model, train, test, shots=evaluation.shots, seeds=evaluation.seeds,
        representation_name=evaluation.representation, img_size=evaluation.img_size,
        test_limit=evaluation.test_limit, dataset=evaluation.dataset,
    )
    return {f"{r.shots}-shot": float(r.mean) for r in report.results}


def _forward_macs(model, count_model_macs) -> int:
    size = getattr(model.config, "img_size", (224, 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.zeros(1, model.config.in_chans, *size)
    return count_model_macs(model, images)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-") or "model"
