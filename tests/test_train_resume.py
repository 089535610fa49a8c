"""Exact resume: a run stopped by SIGTERM, then killed by SIGKILL, then resumed ends bit-identical on CPU.

The config exercises every piece of state a resume must restore: Adam moments, the schedule position,
EMA, dropout and stochastic-depth RNG, augmentation with Mixup (soft targets), gradient accumulation, the
data position inside an epoch, and the best-on-dev bookkeeping.
"""
from __future__ import annotations

import signal

import torch
from train_helpers import last_logged_step, run, start_and_signal, tiny_tree, vitlab_cmd, weights, write_config

from vitlab.config import load_config
from vitlab.train import pretrain
from vitlab.train.checkpoint import CheckpointDir
from vitlab.train.statefile import load_state

STEPS = 40


def _tree():
    tree = tiny_tree(
        data={"augment": "light2", "dev_fraction": 0.2},
        train={"steps": STEPS, "batch_size": 16, "micro_batch_size": 8, "log_every": 1, "checkpoint_every": 4,
               "eval_every": 10, "ema_decay": 0.99},
    )
    tree["model"].update(dropout=0.1, drop_path=0.1)
    return tree


def test_sigterm_then_sigkill_then_resume_is_bit_identical(tmp_path):
    config = write_config(tmp_path / "run.yaml", _tree())
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"

    pretrain(load_config(config), reference)  # in-process: the same code and thread count as the CLI runs

    cmd = vitlab_cmd("pretrain", "--config", str(config), "--out", str(interrupted))
    # 1. SIGTERM: the run saves a checkpoint at the end of the current step and exits cleanly (128 + 15).
    stopped = start_and_signal(cmd, interrupted, at_step=7, signum=signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "stopped at step" in stopped.stderr and "Traceback" not in stopped.stderr
    stop_step = CheckpointDir(interrupted / "checkpoints").load_latest().state["step"]
    assert stop_step == last_logged_step(interrupted) and 7 <= stop_step < STEPS

    # 2. SIGKILL at an arbitrary later moment (no chance to save anything).
    resume = cmd + ["--resume"]
    killed = start_and_signal(resume, interrupted, at_step=stop_step + 12, signum=signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (interrupted / "summary.json").exists(), "the run must have been killed mid-way"

    # 3. Resume to the end.
    finished = run(resume)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming at step" in finished.stderr

    for name in ("last", "best"):
        ref, got = weights(reference, name), weights(interrupted, name)
        assert ref.keys() == got.keys()
        for key in ref:
            assert torch.equal(ref[key], got[key]), f"{name}.safetensors differs in {key}"
    ref_state = load_state(reference / "checkpoints" / "last.state.safetensors")
    got_state = load_state(interrupted / "checkpoints" / "last.state.safetensors")
    for key, value in ref_state["ema"]["shadow"].items():
        assert torch.equal(value, got_state["ema"]["shadow"][key]), f"EMA differs in {key}"
    assert ref_state["best"] == got_state["best"] and ref_state["data"] == got_state["data"]
    # metrics.jsonl holds each step once, even though steps after the last checkpoint ran twice
    steps = [int(line.split('"step": ')[1].split(",")[0].rstrip("}"))
             for line in (interrupted / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, STEPS + 1))
