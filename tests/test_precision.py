"""precision=auto on a CPU: fp32 without native bf16; with it, bf16 only where the probe measures it faster."""
from __future__ import annotations

import json

import pytest
import torch
from train_helpers import tiny_config

from vitlab.models.vit import VisionTransformer, ViTConfig
from vitlab.train import precision as P
from vitlab.train import run_training
from vitlab.train.probe import cpu_model

AMX = {"fpu", "avx512f", "amx_bf16", "amx_tile"}
ZEN5 = {"fpu", "avx512f", "avx512_bf16"}
OLD = {"fpu", "avx2", "avx512f"}


def timings(fp32_s: float, bf16_s: float):
    calls = []

    def probe() -> dict:
        calls.append(1)
        return {"fp32_s": fp32_s, "bf16_s": bf16_s}

    return probe, calls


@pytest.mark.parametrize("flags", [AMX, ZEN5])
def test_native_bf16_and_a_faster_probe_choose_bf16(flags) -> None:
    probe, calls = timings(1.0, 0.5)
    assert P.choose_cpu(flags, True, probe) == "bf16" and calls == [1]


def test_bf16_must_beat_fp32_by_the_margin() -> None:
    assert P.choose_cpu(AMX, True, timings(1.0, 1.0 / (P.BF16_MIN_SPEEDUP - 0.02))[0]) == "fp32"
    assert P.choose_cpu(AMX, True, timings(1.0, 1.0 / (P.BF16_MIN_SPEEDUP + 0.02))[0]) == "bf16"
    assert P.choose_cpu(AMX, True, timings(0.5, 1.0)[0]) == "fp32"  # bf16 slower (e.g. SDPA-bound)


def test_without_native_bf16_fp32_and_no_probe() -> None:
    probe, calls = timings(1.0, 0.1)
    assert P.choose_cpu(OLD, True, probe) == "fp32"  # no bf16 flag
    assert P.choose_cpu(AMX, False, probe) == "fp32"  # oneDNN says no
    assert P.choose_cpu(AMX, True, None) == "fp32"  # nothing to measure
    assert calls == []


def test_a_failing_probe_keeps_fp32() -> None:
    def probe() -> dict:
        raise RuntimeError("no bf16 kernel for some op")

    assert P.choose_cpu(AMX, True, probe) == "fp32"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert P.cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_model(str(info)) == "Some CPU"
    assert P.cpu_flags(str(tmp_path / "missing")) == set()


def small_probe(batch: int = 4) -> P.ProbeInput:
    model = VisionTransformer(ViTConfig(img_size=16, patch_size=4, width=32, depth=2, mlp_dim=64, num_heads=2,
                                        num_classes=4, in_chans=3))
    return P.ProbeInput(model, batch, 3, 16, 4)


def test_the_probe_leaves_weights_grads_and_rng_alone() -> None:
    probe = small_probe()
    before = {k: v.clone() for k, v in probe.model.state_dict().items()}
    rng = torch.get_rng_state()
    result = P.time_probe(probe, steps=1)
    assert result["fp32_s"] > 0 and result["bf16_s"] > 0
    assert all(torch.equal(before[k], v) for k, v in probe.model.state_dict().items())
    assert all(p.grad is None for p in probe.model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_probe_is_cached_per_model_and_batch(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(P, "time_probe", lambda probe: calls.append(probe.batch) or {"fp32_s": 2.0, "bf16_s": 1.0})
    cache = tmp_path / "probe.json"
    probe = small_probe()
    assert P.cached_probe(probe, cache) == {"fp32_s": 2.0, "bf16_s": 1.0}
    assert P.cached_probe(probe, cache)["bf16_s"] == 1.0 and calls == [4]  # the second run reads the cache
    P.cached_probe(small_probe(batch=8), cache)  # another batch: measured again
    assert calls == [4, 8] and len(json.loads(cache.read_text())) == 2


@pytest.mark.parametrize(("flags", "fast_bf16", "want"), [(ZEN5, True, "bf16"), (ZEN5, False, "fp32"),
                                                          (OLD, True, "fp32")])
def test_the_engine_trains_in_what_auto_chooses(tmp_path, monkeypatch, flags, fast_bf16, want) -> None:
    monkeypatch.setattr(P, "cpu_flags", lambda: flags)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(P, "time_probe", lambda probe: {"fp32_s": 1.0, "bf16_s": 0.5 if fast_bf16 else 1.0})
    summary = run_training(tiny_config(train={"precision": "auto", "steps": 3, "checkpoint_every": 0}), tmp_path,
                           evaluate_test=False)
    assert summary["precision"] == want
