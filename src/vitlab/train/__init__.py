"""Training: the paper's pre-training and fine-tuning recipes on one engine.

    from vitlab.config import load_config
    from vitlab.train import pretrain, finetune, evaluate_checkpoint

    summary = pretrain(load_config("fmnist-vit-tiny"), "runs/fmnist")
    summary = finetune(load_config("digits-finetune", ["model.init_from=runs/fmnist"]), "runs/digits",
                       sweep="lr=0.001,0.003,0.01,0.03")
    evaluate_checkpoint("runs/digits", "digits", split="test")["accuracy"]

Commands: ``vitlab pretrain`` / ``vitlab finetune`` / ``vitlab eval`` (see docs/training.md).
"""
from __future__ import annotations

from vitlab.train.engine import TrainingDiverged, run_training
from vitlab.train.evaluation import evaluate_checkpoint
from vitlab.train.runs import finetune, parse_sweep, pretrain

__all__ = ["pretrain", "finetune", "evaluate_checkpoint", "run_training", "parse_sweep", "TrainingDiverged"]
