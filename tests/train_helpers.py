"""Small configs and helpers shared by the training tests (tiny ViTs on synthetic data: seconds, not minutes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from vitlab.config import RunConfig
from vitlab.models.weights import read_safetensors

TINY_MODEL = {"name": "vit_ti4", "depth": 2, "width": 32, "mlp_dim": 64, "num_heads": 2}


def tiny_tree(**sections) -> dict:
    """A nested config for a 20k-parameter ViT on 16-px synthetic images; ``sections`` update it."""
    tree = {
        "model": dict(TINY_MODEL),
        "data": {"dataset": "synthetic", "img_size": 16, "test_split": "test",
                 "options": {"num_samples": 256, "img_size": 16, "num_classes": 4, "channels": 3}},
        "optim": {"lr": 0.003, "warmup_steps": 3, "weight_decay": 0.05},
        # fp32: the tests compare runs numerically; precision=auto could pick bf16 on a CPU with native bf16.
        "train": {"steps": 20, "batch_size": 16, "log_every": 5, "checkpoint_every": 10, "num_threads": 1,
                  "precision": "fp32"},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return tree


def tiny_config(**sections) -> RunConfig:
    return RunConfig.from_dict(tiny_tree(**sections))


def write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return read_safetensors(Path(run_dir) / "checkpoints" / f"{name}.safetensors")[0]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def vitlab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitlab", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env())


def last_logged_step(run_dir: Path) -> int:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    step = 0
    for line in path.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except (json.JSONDecodeError, ValueError):
            pass
    return step


def start_and_signal(cmd: list[str], run_dir: Path, at_step: int, signum: int,
                     timeout: float = 240) -> subprocess.CompletedProcess:
    """Start ``cmd``, wait until metrics.jsonl shows ``at_step``, send ``signum``, wait for the exit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    deadline = time.monotonic() + timeout
    try:
        while last_logged_step(run_dir) < at_step:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"the run ended before step {at_step} (rc {proc.returncode}):\n{err[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"step {at_step} not reached in {timeout} s")
            time.sleep(0.01)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
