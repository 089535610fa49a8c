"""The training step reads nothing back to the host: on a GPU such a read stalls the queue of kernels.

Runnable without a GPU: every way a tensor reaches Python (``item``, ``tolist``, ``float()``, ``int()``,
``bool()``, ``.cpu()``, ``.numpy()``) is counted while the engine trains; between two log steps there must
be none. The objective counts its calls, so a read is placed in the step it happened in.
"""
from __future__ import annotations

import traceback

import pytest
import torch
from train_helpers import tiny_config

from vitlab.train import run_training
from vitlab.train.mpp import MaskedPatchPrediction
from vitlab.train.objectives import Supervised

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


class _Counting:
    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, model, images, targets):
        self.calls += 1
        return self.inner(model, images, targets)


@pytest.mark.parametrize("objective", ["classify", "mpp"])
def test_no_host_read_between_log_steps(tmp_path, monkeypatch, objective):
    steps, accumulation = 6, 2
    counting = _Counting(Supervised() if objective == "classify" else MaskedPatchPrediction())
    reads: list[tuple[str, int, str]] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            reads.append((_name, counting.calls, "".join(traceback.format_stack(limit=6)[:-1])))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    cfg = tiny_config(
        data={"augment": "light2", "test_split": None},
        train={"steps": steps, "log_every": steps, "checkpoint_every": 0, "eval_every": 0, "ema_decay": 0.9,
               "micro_batch_size": 8, "objective": objective},
    )
    run_training(cfg, tmp_path, objective=counting, evaluate_test=False)
    assert counting.calls == steps * accumulation
    # From the first forward pass to the last one (the log read comes after it), nothing reached the host.
    inside = [r for r in reads if 1 <= r[1] < steps * accumulation]
    assert not inside, f"{len(inside)} host reads inside training steps, first: {inside[0][0]}\n{inside[0][2]}"
    assert any(r[1] == steps * accumulation for r in reads), "the log step reads the meter once"
