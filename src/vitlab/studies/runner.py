"""Run a study: train and measure every (variant, grid value, seed) point, then write the results and verdicts.

Each point is a directory ``OUT/runs/<variant>-<grid><value>-s<seed>/`` holding the pre-training run
(``pretrain/``), the fine-tuning run (``finetune/``) when the study fine-tunes, the subset list of a data-size
point, and ``point.json`` (what was measured). A finished point (``point.json`` present) is reused, so a killed
study resumes point by point; ``resume=False`` retrains.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from vitlab.config import RunConfig, load_config
from vitlab.data import build_stream, get_source
from vitlab.data.splits import nested_subsets
from vitlab.evaluate.fewshot import fewshot_evaluate
from vitlab.models.flops import count_model_macs
from vitlab.models.weights import atomic_write, load_model
from vitlab.studies.learned import learned_numbers
from vitlab.studies.results import write_results
from vitlab.studies.study import Study, Variant
from vitlab.train import finetune, pretrain

log = logging.getLogger(__name__)


class StudyInterrupted(RuntimeError):
    """A run of the study stopped on a signal (its checkpoint is saved): the study stops too, and resumes when it
    is run again."""


def _finished(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    if summary.get("interrupted"):
        raise StudyInterrupted(f"{run_dir} was stopped; run the study again to resume it")
    return summary


@dataclass
class Point:
    """One trained model of a study and what it measured."""

    label: str
    value: Any  # the grid value: subset size, step budget, learning rate; None for one-point studies
    seed: int
    size: int  # pre-training images available
    steps: int
    run_dir: str
    pretrain_accuracy: Optional[float]
    fewshot: dict[str, float]  # "5-shot" -> mean accuracy over the few-shot draws
    images_seen: int
    pretrain_gflops: float  # training FLOPs = 3 x forward
    family: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # every number the claims may read
    wall_seconds: float = 0.0
    fewshot_std: dict[str, float] = field(default_factory=dict)  # spread over seeds, on merged points only


def point_tag(study: Study, label: str, value: Any, seed: int) -> str:
    if value is None:
        grid = ""
    else:
        grid = {"data_size": f"-n{value}", "scaling": f"-steps{value}", "head": f"-lr{value:g}"}[study.kind]
    return f"{_slug(label)}{grid}-s{seed}"


def run_study(study: Study, out_dir: str | Path, resume: bool = True) -> list[Any]:
    """Train and evaluate every point, then write ``study.json``/``.csv``/``.md`` with the claims' verdicts."""
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(yaml.safe_dump(study.to_dict(), sort_keys=False))
    points = []
    for label, variant in study.models.items():
        for value in study.grid:
            for seed in study.seeds:
                run_dir = out / "runs" / point_tag(study, label, value, seed)
                point_file = run_dir / "point.json"
                if resume and point_file.is_file():
                    points.append(Point(**json.loads(point_file.read_text())))
                    continue
                started = time.perf_counter()
                point = run_point(study, label, variant, value, seed, run_dir, resume)
                point.wall_seconds = round(time.perf_counter() - started, 1)
                atomic_write(point_file, lambda path, p=point: Path(path).write_text(
                    json.dumps(dataclasses.asdict(p), indent=2)))
                points.append(point)
    write_results(study, points, out)
    return points


def point_config(study: Study, variant: Variant, value: Any, seed: int) -> RunConfig:
    """The pre-training config of one point: base preset, study overrides, the variant's, the seed, the grid."""
    cfg = load_config(study.base, study.overrides)
    if any(o.startswith("model.name=") for o in variant.overrides):
        cfg.model.overrides = {}  # the base's model options belong to the base's model
    cfg = cfg.override([*variant.overrides, f"seed={seed}"])
    if study.kind == "scaling":
        cfg = cfg.override({"train.steps": value})
    elif study.kind == "head":
        cfg = cfg.override({"optim.lr": value})
    return cfg


def run_point(study: Study, label: str, variant: Variant, value: Any, seed: int, run_dir: Path,
              resume: bool) -> Point:
    cfg = point_config(study, variant, value, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    source = get_source(cfg.data.dataset, split=cfg.data.train_split, **cfg.data.options)
    size = len(source)
    if study.kind == "data_size":
        size = min(int(value), len(source))
        cfg = cfg.override({"data.exclusions": str(subset_exclusions(source, size, study.subset_seed, run_dir))})
        if study.budget is not None:
            cfg = cfg.override({"train.steps": study.budget.steps(size, cfg.train.batch_size)})
    metrics: dict[str, float] = {}
    fewshot: dict[str, float] = {}
    model, checkpoint, steps, pretrain_accuracy = None, None, 0, None
    if variant.pretrain:
        summary = _finished(pretrain(cfg, run_dir / "pretrain", resume=resume), run_dir / "pretrain")
        checkpoint = run_dir / "pretrain" / "checkpoints" / "last.safetensors"
        model = load_model(checkpoint).eval()
        steps = int(summary.get("steps", cfg.train.steps or 0))
        pretrain_accuracy = summary.get("metrics", {}).get("test_accuracy")
        if pretrain_accuracy is not None:
            metrics["pretrain"] = float(pretrain_accuracy)
        if study.evaluation.fewshot:
            fewshot = evaluate_fewshot(model, study)
            metrics.update(fewshot)
        if study.evaluation.inspect_images:
            metrics.update(learned_numbers(model, inspect_images(cfg, model, study.evaluation.inspect_images)))
    if study.evaluation.finetune:
        metrics["finetune"] = finetune_accuracy(study, cfg, checkpoint, seed, run_dir / "finetune", resume)
    images = steps * cfg.train.batch_size
    gflops = 3 * 2 * forward_macs(model) * images / 1e9 if model is not None else 0.0
    return Point(label=label, value=value, seed=seed, size=size, steps=steps, run_dir=str(run_dir),
                 pretrain_accuracy=pretrain_accuracy, fewshot=fewshot, images_seen=images, pretrain_gflops=gflops,
                 family=variant.family, metrics=metrics)


def subset_exclusions(source, size: int, subset_seed: int, run_dir: Path) -> Path:
    """The complement of the nested subset of ``size`` images, as an exclusion list the engine honours."""
    labels = getattr(source, "labels", None)
    kept = set(int(i) for i in nested_subsets(labels if labels is not None else len(source), [size],
                                              seed=subset_seed)[0])
    path = run_dir / "excluded.txt"
    path.write_text("\n".join(str(i) for i in range(len(source)) if i not in kept) + "\n")
    return path


def evaluate_fewshot(model, study: Study) -> dict[str, float]:
    evaluation = study.evaluation
    train = get_source(evaluation.dataset, split=evaluation.train_split)
    test = get_source(evaluation.dataset, split=evaluation.test_split)
    report = fewshot_evaluate(
        model, train, test, shots=evaluation.shots, seeds=evaluation.seeds,
        representation_name=evaluation.representation, img_size=evaluation.img_size,
        test_limit=evaluation.test_limit, dataset=evaluation.dataset,
    )
    return {f"{r.shots}-shot": float(r.mean) for r in report.results}


def finetune_accuracy(study: Study, pretrain_cfg: RunConfig, checkpoint: Optional[Path], seed: int, out: Path,
                      resume: bool) -> float:
    """Test accuracy after fine-tuning the pre-trained weights (or, without them, the same architecture from a
    random initialisation: the scratch arm), with the study's fine-tuning preset and one learning rate."""
    spec = study.evaluation.finetune or {}
    cfg = load_config(spec["preset"], list(spec.get("overrides") or []))
    cfg = cfg.override({"seed": seed})
    if checkpoint is not None:
        cfg = cfg.override({"model.init_from": str(checkpoint)})
    else:
        model_fields = {f"model.{key}": value for key, value in pretrain_cfg.model.overrides.items()}
        cfg = cfg.override({"model.name": pretrain_cfg.model.name, "model.init_from": None, **model_fields})
    summary = _finished(finetune(cfg, out, resume=resume, sweep={}), out)
    return float(summary["metrics"]["test_accuracy"])


def inspect_images(cfg: RunConfig, model, count: int) -> torch.Tensor:
    """``count`` test images of the pre-training set, preprocessed as the model saw them."""
    source = get_source(cfg.data.dataset, split=cfg.data.test_split or cfg.data.train_split, **cfg.data.options)
    stream = build_stream(source, batch_size=min(count, 256), train=False, img_size=model.config.img_size,
                          in_chans=model.config.in_chans, indices=list(range(min(count, len(source)))))
    images = [batch[0] for batch in stream]
    return torch.cat(images)[:count]


def forward_macs(model) -> int:
    size = getattr(model.config, "img_size", (224, 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    return count_model_macs(model, torch.zeros(1, model.config.in_chans, *size))


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-") or "model"
