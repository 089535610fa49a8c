"""``vitlab plan``: its memory model against the peak memory of real training steps on this CPU, and its tables.

The measurement runs one fp32 step in a fresh process (``MALLOC_MMAP_THRESHOLD_`` set, so freed tensors leave
the resident set at once) and takes the larger of a 0.5 ms RSS sampler and the kernel's high-water mark when the
step set it: other jobs on a shared machine slow the step down but do not change its resident memory.
"""
from __future__ import annotations

import json

import pytest

from vitlab.cli import main
from vitlab.config import load_config
from vitlab.train import plan as P
from vitlab.train.commands_plan import measure_in_subprocess

# (preset, overrides, micro-batch, tolerance of the checkpointed step): the explicit attention of short sequences
# (50 tokens), SDPA (257 tokens), and a hybrid (ResNet root, 17 tokens). SDPA's CPU kernel takes a working buffer
# that depends on the instruction set: the same checkpointed 257-token step measured 34.9 MiB on a quiet Zen 5
# (AVX-512) and 47.4 MiB on a quiet Zen 1 (AVX2) against the model's 43.9, so that one case gets 30%. The
# checkpointed 50-token step measured 24.2-24.5 MiB in three runs on an Intel Xeon with AMX against the model's
# 28.2 (15.1-16.6% apart; within 15% on the AMD hosts), so it gets 20%.
SMALL = [
    ("fmnist-vit-ti4", [], 64, 0.20),
    ("fmnist-vit-ti4", ["data.img_size=32", "model.patch_size=2"], 16, 0.30),
    ("fmnist-vit-tiny", [], 64, 0.15),
]


@pytest.mark.parametrize("preset,overrides,batch,checkpointed_tolerance", SMALL)
def test_memory_model_close_to_measured_cpu_peak(preset, overrides, batch,
                                                  checkpointed_tolerance) -> None:
    cfg = load_config(preset, overrides)
    arch = P.architecture(cfg, classes=10)
    measured = [measure_in_subprocess(preset, overrides, batch, 10, [every])[0] for every in (1, 0)]  # fresh each
    for every, result in zip((1, 0), measured):
        setup = P.Setup(strategy="ddp", gpus=1, precision="fp32", checkpoint_every=every,
                        explicit_attention=P.uses_explicit_attention(arch))
        predicted = P.memory(arch, setup, batch).first_step_growth
        growth = result["growth_bytes"]
        assert abs(predicted / growth - 1) < (checkpointed_tolerance if every else 0.15), \
            f"checkpointing {every}: model {predicted / 2**20:.1f} MiB, measured {growth / 2**20:.1f} MiB"
    assert measured[0]["growth_bytes"] < 0.6 * measured[1]["growth_bytes"]  # checkpointing saves memory


def _plan(capsys, *args: str) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return {(r["strategy"], r["checkpointing"]): r for r in json.loads(capsys.readouterr().out)["rows"]}


def test_plan_tables_follow_the_strategies(capsys) -> None:
    rows = _plan(capsys, "--config", "i21k-vit-b16", "--gpus", "8", "--gpu-memory", "24")
    ddp, ddp_ac = rows[("ddp", "off")], rows[("ddp", "every block")]
    fsdp, fsdp_ac = rows[("fsdp", "off")], rows[("fsdp", "every block")]
    params = 103.2e6 * 4 / 2**30  # ViT-B/16 with 21,843 classes and a 768-wide pre-logits layer, fp32
    assert ddp["gradients_gib"] == pytest.approx(2 * params, rel=0.01)  # the gradients and DDP's buckets
    assert ddp["optimizer_gib"] == pytest.approx(2 * params, rel=0.01)  # Adam's two moments
    assert fsdp["optimizer_gib"] == pytest.approx(2 * params / 8, rel=0.01)  # sharded over 8 GPUs
    assert fsdp["gradients_gib"] == pytest.approx(params / 8, rel=0.01)
    # 24 GiB holds a smaller micro-batch without checkpointing; the recipe's 4096 then needs accumulation
    assert 0 < ddp["micro_batch"] < ddp_ac["micro_batch"] <= 512
    assert ddp["accumulation"] == 4096 // (8 * ddp["micro_batch"])
    assert fsdp_ac["activations_gib"] < fsdp["activations_gib"]
    assert fsdp_ac["epoch_hours"] > fsdp["epoch_hours"]  # the recomputation costs time
    for row in rows.values():
        assert row["peak_gib"] <= 24 - 2


def test_plan_prints_its_assumptions_and_rejects_bad_numbers(capsys) -> None:
    assert main(["plan", "--config", "jft-vit-h14", "--gpus", "64", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "ASSUMED 40% MFU" in out and "303,000,000 training images" in out
    fsdp_rows = [line for line in out.splitlines() if line.startswith("| fsdp")]
    assert len(fsdp_rows) == 2 and "every block" in fsdp_rows[1] and "does not fit" not in fsdp_rows[1]
    assert main(["plan", "--config", "jft-vit-h14", "--gpus", "0"]) == 2
    assert "--gpus=0" in capsys.readouterr().err
