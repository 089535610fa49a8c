"""The attention kernels a run uses: the default thresholds unless the probe measured SDPA faster on this CPU."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from train_helpers import tiny_config

from vitlab.models import kernels
from vitlab.models.vit import VisionTransformer, ViTConfig
from vitlab.train import attention_probe as A
from vitlab.train import run_training
from vitlab.train.probe import ProbeInput


def small_probe(img_size: int = 16, batch: int = 4) -> ProbeInput:
    """A 2-block ViT: (16 / 4)^2 + 1 = 17 keys at 16 px (the explicit product), 65 at 32 px (SDPA in fp32)."""
    model = VisionTransformer(ViTConfig(img_size=img_size, patch_size=4, width=32, depth=2, mlp_dim=64,
                                        num_heads=2, num_classes=4, in_chans=3))
    return ProbeInput(model, batch, 3, img_size, 4)


def count_sdpa(monkeypatch) -> list[int]:
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    return calls


def test_sdpa_switch_routes_every_attention_and_is_undone(monkeypatch) -> None:
    calls = count_sdpa(monkeypatch)
    model, images = small_probe().model, torch.randn(2, 3, 16, 16)
    model(images)
    assert calls == []  # 17 keys, fp32, CPU: the explicit product
    with kernels.sdpa_attention():
        with kernels.sdpa_attention(False):  # "no change" inside does not switch the explicit path back on
            model(images)
    assert len(calls) == 2
    model(images)
    assert len(calls) == 2  # undone on exit


def test_recorded_paths_tell_which_models_take_the_explicit_product() -> None:
    assert A.takes_explicit_path(small_probe(16), None)
    assert not A.takes_explicit_path(small_probe(32), None)  # 65 keys in fp32: SDPA already
    with kernels.sdpa_attention():
        assert not A.takes_explicit_path(small_probe(16), None)


@pytest.mark.parametrize(("explicit_s", "sdpa_s", "want"), [
    (1.0, 1.0 / (A.SDPA_MIN_SPEEDUP + 0.02), "sdpa"),
    (1.0, 1.0 / (A.SDPA_MIN_SPEEDUP - 0.02), "explicit"),  # faster, but within the margin: keep the default
    (1.0, 2.0, "explicit"),
])
def test_sdpa_must_beat_the_explicit_product_by_the_margin(tmp_path, monkeypatch, explicit_s, sdpa_s, want) -> None:
    monkeypatch.setattr(A, "time_probe", lambda probe, dtype: {"explicit_s": explicit_s, "sdpa_s": sdpa_s})
    assert A.choose_attention(small_probe(), None, tmp_path / "probe.json") == want


def test_models_without_the_explicit_path_are_not_timed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(A, "time_probe", lambda probe, dtype: pytest.fail("timed a model with nothing to choose"))
    assert A.choose_attention(small_probe(32), None, tmp_path / "probe.json") == "explicit"


def test_the_probe_is_cached_per_model_and_precision_and_leaves_the_model_alone(tmp_path, monkeypatch) -> None:
    probe, cache = small_probe(), tmp_path / "probe.json"
    before = {k: v.clone() for k, v in probe.model.state_dict().items()}
    rng = torch.get_rng_state()
    timings = A.time_probe(probe, None, steps=1)
    assert timings["explicit_s"] > 0 and timings["sdpa_s"] > 0
    assert all(torch.equal(before[k], v) for k, v in probe.model.state_dict().items())
    assert all(p.grad is None for p in probe.model.parameters()) and torch.equal(torch.get_rng_state(), rng)

    calls = []
    monkeypatch.setattr(A, "time_probe", lambda probe, dtype: calls.append(dtype) or {"explicit_s": 2.0, "sdpa_s": 1.0})
    assert A.choose_attention(probe, None, cache) == "sdpa"
    assert A.choose_attention(probe, None, cache) == "sdpa" and calls == [None]  # the second run reads the cache
    A.choose_attention(small_probe(batch=8), None, cache)  # another batch: measured again
    assert calls == [None, None] and len(json.loads(cache.read_text())) == 2


def test_a_failing_probe_keeps_the_default(tmp_path, monkeypatch) -> None:
    def fail(probe, dtype):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(A, "time_probe", fail)
    assert A.choose_attention(small_probe(), None, tmp_path / "probe.json") == "explicit"


@pytest.mark.parametrize("sdpa_faster", [True, False])
def test_the_engine_trains_with_the_kernels_the_probe_chose(tmp_path, monkeypatch, sdpa_faster) -> None:
    timings = {"explicit_s": 1.0, "sdpa_s": 0.5 if sdpa_faster else 1.0}
    monkeypatch.setattr(A, "time_probe", lambda probe, dtype: timings)
    calls = count_sdpa(monkeypatch)
    summary = run_training(tiny_config(train={"precision": "fp32", "steps": 3, "checkpoint_every": 0}), tmp_path,
                           evaluate_test=False)
    assert summary["attention"] == ("sdpa" if sdpa_faster else "explicit")
    assert (len(calls) > 0) == sdpa_faster
    assert kernels.uses_explicit_attention(torch.zeros(1, 1, 17, 8), torch.zeros(1, 1, 17, 8))  # undone after the run
