"""DDP through torchrun: 2 CPU processes (gloo) reach the weights of 1 process with the same global batch.

The stream gives global batch s = perm[s*G:(s+1)*G] and rank r its r-th slice, and DDP averages the ranks'
gradients, so both runs take the same optimiser steps; only float summation order differs (< 1e-5).

One parameter is left out of the comparison: the bias of the attention *keys*. Adding a constant vector to
every key adds the same number to a whole row of attention logits, which the softmax ignores, so its gradient
is exactly zero in exact arithmetic and pure rounding noise (~1e-9) in floats. Adam divides by the root of
that noise's own second moment and turns it into steps of about lr / 10 whose signs depend on summation
order. The parameter has no effect on any output, which the test checks by comparing logits too.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch
from train_helpers import run, tiny_tree, weights, write_config

import vitlab
from vitlab.config import RunConfig
from vitlab.train import pretrain

STEPS = 20


def _key_bias_free(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith("attn.qkv.bias"):
            width = value.shape[0] // 3
            value = torch.cat([value[:width], value[2 * width:]])  # q and v biases; k bias dropped (see above)
        out[key] = value
    return out


def _tree():
    return tiny_tree(data={"augment": "flip", "test_split": None},
                     train={"steps": STEPS, "batch_size": 16, "checkpoint_every": 10, "log_every": 5})


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    summary = pretrain(RunConfig.from_dict(_tree()), out / "run")
    assert summary["world_size"] == 1 and summary["steps"] == STEPS
    return out / "run"


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_gloo_processes_match_one_process(tmp_path, single_process_run, strategy):
    config = write_config(tmp_path / "ddp.yaml", _tree())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vitlab", "pretrain", "--config", str(config), "--out", str(tmp_path / "ddp"),
           f"distributed.strategy={strategy}"]
    result = run(cmd, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    two, one = weights(tmp_path / "ddp"), weights(single_process_run)
    a, b = _key_bias_free(two), _key_bias_free(one)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, f"max abs difference {diff:.3g}"
    # the full models (key bias included) compute the same function
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    m2 = vitlab.load_model(tmp_path / "ddp" / "checkpoints" / "last.safetensors").eval()
    m1 = vitlab.load_model(single_process_run / "checkpoints" / "last.safetensors").eval()
    with torch.no_grad():
        assert float((m2(images) - m1(images)).abs().max()) < 1e-5
    # rank 0 alone wrote the run directory, and said so once
    assert result.stderr.count("pretrain results") == 1
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["micro_batch_size"] == 8
