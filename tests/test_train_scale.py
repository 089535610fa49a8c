"""Beyond one machine: activation checkpointing, FSDP2 options and sharded checkpoints (DCP), on CPU and gloo.

* activation checkpointing recomputes the same numbers: loss and every gradient equal the plain model's (fp32), and
  a training run with it ends with bit-identical weights;
* 2 gloo processes with FSDP2 + activation checkpointing + bf16 reach the weights of one bf16 process;
* a sharded checkpoint written by 2 processes resumes on 1 and the reverse: the tensors read back are exactly those
  written, and the resumed run ends where the uninterrupted one does up to float summation order.

The attention *key* bias is left out of the cross-world-size weight comparisons: its gradient is exactly zero in
exact arithmetic and rounding noise in floats, which Adam amplifies (see tests/test_train_ddp.py).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_helpers import max_abs_diff, run, tiny_tree, weights, write_config

import vitlab
from vitlab.config import RunConfig
from vitlab.errors import ConfigError
from vitlab.train import pretrain
from vitlab.train.checkpoint_dist import ShardedCheckpoints
from vitlab.train.distributed import DistEnv, set_activation_checkpointing

from conftest import jitter_

STEPS = 20
SHARDED = ["distributed.strategy=fsdp", "distributed.sharded_checkpoints=true"]


def _tree(**train):
    return tiny_tree(data={"augment": "flip", "test_split": None},
                     train={"steps": STEPS, "batch_size": 16, "checkpoint_every": 10, "log_every": 5, **train})


def _without_key_bias(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith("attn.qkv.bias"):
            width = value.shape[0] // 3
            value = torch.cat([value[:width], value[2 * width:]])
        out[key] = value
    return out


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def _torchrun(config: Path, out: Path, *overrides: str, resume: bool = False) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vitlab", "pretrain", "--config", str(config), "--out", str(out), *overrides]
    result = run(cmd + (["--resume"] if resume else []), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def _one_process(config: Path, out: Path, *overrides: str, resume: bool = False) -> None:
    cmd = [sys.executable, "-m", "vitlab", "pretrain", "--config", str(config), "--out", str(out), *overrides]
    result = run(cmd + (["--resume"] if resume else []), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def _back_to_step_10(run_dir: Path, copy: Path) -> Path:
    """A copy of a finished sharded run as it was after its step-10 checkpoint (the later one removed)."""
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "sharded" / f"step-{STEPS:08d}")
    (copy / "summary.json").unlink()
    return copy


# ---- activation checkpointing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,every", [("vit_ti16", True), ("vit_ti16", 2), ("r_ti16", True)])
def test_activation_checkpointing_keeps_loss_and_gradients(name: str, every) -> None:
    options = dict(num_classes=5, img_size=32, patch_size=8 if name == "vit_ti16" else 2, depth=3, width=64,
                   mlp_dim=128, num_heads=4, dropout=0.1, drop_path=0.2)
    if name == "r_ti16":
        options.update(hybrid_layers=[], hybrid_width=32)
    model = jitter_(vitlab.create_model("vit_ti16", **options)).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same dropout / stochastic-depth masks on both sides
        loss = F.cross_entropy(model(images, last_block_cls_only=True), labels)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = loss_and_grads()
    set_activation_checkpointing(model, every)
    assert model.recompute_every == int(every)
    recomputed_loss, recomputed = loss_and_grads()
    assert abs(plain_loss.item() - recomputed_loss.item()) < 1e-6
    assert plain.keys() == recomputed.keys()
    for key in plain:
        assert float((plain[key] - recomputed[key]).abs().max()) < 1e-6, key


def test_activation_checkpointing_choices() -> None:
    with pytest.raises(ConfigError, match="train.activation_checkpointing"):
        RunConfig.from_dict(_tree(activation_checkpointing=0)).validate(check_model=False)
    assert RunConfig.from_dict(_tree(activation_checkpointing=3)).validate(check_model=False).train \
        .activation_checkpointing == 3
    with pytest.raises(ConfigError, match="no Transformer blocks"):
        set_activation_checkpointing(vitlab.create_model("bit_r50x1", num_classes=3), True)


def test_training_with_activation_checkpointing_is_bit_identical(tmp_path) -> None:
    plain = pretrain(RunConfig.from_dict(_tree()), tmp_path / "plain")
    recomputed = pretrain(RunConfig.from_dict(_tree(activation_checkpointing=True)), tmp_path / "ac")
    assert plain["steps"] == recomputed["steps"] == STEPS
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ac")
    assert all(torch.equal(a[key], b[key]) for key in a)


# ---- FSDP2 with activation checkpointing and bf16 ---------------------------------------------------------------
@pytest.mark.parametrize("variant", [
    "autocast",  # train.precision=bf16 on both sides
    pytest.param("fsdp_param_dtype", marks=pytest.mark.slow),  # FSDP2 MixedPrecisionPolicy(bf16, fp32)
])
def test_fsdp_checkpointing_bf16_two_processes_match_one(tmp_path, variant: str) -> None:
    config = write_config(tmp_path / "run.yaml", _tree(precision="bf16"))
    one = pretrain(RunConfig.from_dict(_tree(precision="bf16")), tmp_path / "one")
    assert one["world_size"] == 1
    extra = ["distributed.param_dtype=bf16", "train.precision=fp32"] if variant == "fsdp_param_dtype" else []
    _torchrun(config, tmp_path / "fsdp", "distributed.strategy=fsdp", "train.activation_checkpointing=true", *extra)
    two = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["micro_batch_size"] == 8
    # bf16 rounds every product to 8 bits of mantissa, in another batch split: a bf16 tolerance, tighter than
    # the gap between this bf16 run and an fp32 one (7e-3 on these weights).
    tolerance = 5e-3 if variant == "autocast" else 3e-2
    diff = max_abs_diff(_without_key_bias(weights(tmp_path / "fsdp", "best")),
                        _without_key_bias(weights(tmp_path / "one")))
    assert diff < tolerance, f"max abs weight difference {diff:.3g}"
    losses_two, losses_one = _losses(tmp_path / "fsdp"), _losses(tmp_path / "one")
    assert len(losses_two) == len(losses_one) == STEPS // 5
    assert max(abs(a - b) for a, b in zip(losses_two, losses_one)) < (2e-3 if variant == "autocast" else 1e-2)


# ---- sharded checkpoints across world sizes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_rank_sharded_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sharded2")
    config = write_config(root / "run.yaml", _tree())
    _torchrun(config, root / "run", *SHARDED)
    return root / "run"


def test_sharded_checkpoint_reads_back_exactly_on_one_process(two_rank_sharded_run) -> None:
    ckpt = ShardedCheckpoints(two_rank_sharded_run / "checkpoints" / "sharded", DistEnv())
    assert [step for step, _ in ckpt.steps()] == [STEPS, 10]
    assert sorted(p.name for p in ckpt.step_dir(STEPS).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                                     "state.safetensors"]
    path, state = ckpt.latest()
    assert state["step"] == STEPS and state["world_size"] == 2 and state["optimizer"] is None
    model = vitlab.load_model(two_rank_sharded_run / "checkpoints" / "best.safetensors")  # gathered by FSDP
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for param in model.parameters():
        torch.nn.init.zeros_(param)
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt.load(path, model, optimizer)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # bit for bit
    assert all(float(s["step"]) == STEPS for s in optimizer.state.values())


def test_two_rank_sharded_checkpoint_resumes_on_one(tmp_path, two_rank_sharded_run) -> None:
    copy = _back_to_step_10(two_rank_sharded_run, tmp_path / "resumed")
    _one_process(two_rank_sharded_run.parent / "run.yaml", copy, *SHARDED, resume=True)
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["resumed_from"] == 10 and summary["world_size"] == 1 and summary["steps"] == STEPS
    diff = max_abs_diff(_without_key_bias(weights(copy, "best")),
                        _without_key_bias(weights(two_rank_sharded_run, "best")))
    assert diff < 1e-5, f"max abs difference {diff:.3g}"  # summation order only


@pytest.mark.slow
def test_one_rank_sharded_checkpoint_resumes_on_two(tmp_path) -> None:
    config = write_config(tmp_path / "run.yaml", _tree())
    _one_process(config, tmp_path / "one", *SHARDED)
    copy = _back_to_step_10(tmp_path / "one", tmp_path / "resumed")
    _torchrun(config, copy, *SHARDED, resume=True)
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["resumed_from"] == 10 and summary["world_size"] == 2
    diff = max_abs_diff(_without_key_bias(weights(copy, "best")), _without_key_bias(weights(tmp_path / "one", "best")))
    assert diff < 1e-5, f"max abs difference {diff:.3g}"
