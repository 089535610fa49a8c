"""Real data through the real commands: `vitlab pretrain --config fmnist-vit-tiny` (shortened) learns Fashion-MNIST,
and `vitlab finetune --config digits-finetune` moves it to 48 px digits.

The full preset's ">= 91% test accuracy in 10 minutes on 2 cores" (issue 18) is measured by the slow test below
and in docs/training.md; its 14,000 steps fit in 10 minutes where bf16 runs natively with AMX, so the time bar is
asserted on such CPUs only (elsewhere the run takes longer: the preset's meta says so). The same holds for the
plain-ViT preset `fmnist-vit-plain` at >= 90%. The fast test trains a cut-down model for a few dozen steps and
checks that it learns (loss falls, accuracy far above the 10% of chance), that the progress bar is drawn and the
run directory is complete.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from train_helpers import subprocess_env, vitlab_cmd

from vitlab.errors import DataError
from vitlab.train.precision import cpu_flags


@pytest.fixture(scope="module")
def fashion_mnist_available():
    from vitlab.data import get_source

    try:
        get_source("fashion_mnist", split="test")
    except DataError as error:  # offline machine without the dataset: nothing to learn from
        pytest.skip(f"Fashion-MNIST not available: {error}")


def test_short_fashion_mnist_run_learns_and_shows_progress(tmp_path, fashion_mnist_available):
    out = tmp_path / "fmnist"
    env = subprocess_env()
    env["VITLAB_PROGRESS"] = "always"  # draw the bar as on a terminal
    cmd = vitlab_cmd("pretrain", "--config", "fmnist-vit-tiny", "--out", str(out), "train.steps=60",
                     "train.batch_size=64", "model.depth=2", "model.width=32", "model.mlp_dim=64",
                     "model.num_heads=2", "optim.warmup_steps=10", "optim.lr=0.003", "train.log_every=10",
                     "train.num_threads=1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # (text mode turns the bar's carriage returns into newlines)
    assert "pretrain 60/60 [####" in result.stderr and "ETA" in result.stderr and "img/s" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "fashion_mnist" and summary["img_size"] == 32 and summary["num_classes"] == 10
    assert summary["metrics"]["test_accuracy"] > 0.3, summary["metrics"]  # chance is 0.10 (measured: 0.41)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 6 and losses[-1] < 0.85 * losses[0]  # from ln(10) = 2.30 to about 1.7

    # `vitlab finetune` from that checkpoint at a higher resolution (32 -> 48 px: 4x4 -> 6x6 patches of 2x2 on the
    # ResNet stem's stride-4 map) on scikit-learn's digits
    ft = tmp_path / "digits"
    result = subprocess.run(vitlab_cmd("finetune", "--config", "digits-finetune", f"model.init_from={out}",
                                       "data.img_size=48", "train.steps=15", "optim.warmup_steps=3", "train.num_threads=1",
                                       "--sweep", "none", "--out", str(ft)),
                            capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((ft / "summary.json").read_text())
    assert summary["task"] == "finetune" and summary["img_size"] == 48 and summary["dataset"] == "digits"
    assert summary["metrics"]["test_accuracy"] > 0.2  # chance is 0.10


def _acceptance_run(tmp_path, preset: str, accuracy: float) -> dict:
    """``vitlab pretrain --config PRESET`` end to end: at least ``accuracy`` on the test set, and within 600 s in
    bf16 where the CPU has AMX (the machine the presets' step counts were measured on)."""
    out = tmp_path / preset
    result = subprocess.run(vitlab_cmd("pretrain", "--config", preset, "--out", str(out)),
                            capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["test_accuracy"] >= accuracy
    if "amx_bf16" in cpu_flags():
        assert summary["precision"] == "bf16"
        assert summary["wall_seconds"] <= 600
    return summary


@pytest.mark.slow
def test_fmnist_vit_tiny_preset_reaches_91_percent_in_10_minutes(tmp_path, fashion_mnist_available):
    """The issue's acceptance run (minutes on 2 cores; `pytest -m slow`)."""
    _acceptance_run(tmp_path, "fmnist-vit-tiny", 0.91)


@pytest.mark.slow
def test_fmnist_vit_plain_preset_reaches_90_percent_in_10_minutes(tmp_path, fashion_mnist_available):
    """Issue 18's plain-ViT acceptance run (patches, no stem; minutes on 2 cores; `pytest -m slow`)."""
    spec = _acceptance_run(tmp_path, "fmnist-vit-plain", 0.90)["model_spec"]
    assert spec["family"] == "vit" and spec["patch_size"] == 6  # no stem
