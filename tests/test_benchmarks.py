"""The benchmark scripts run: each in its ``--quick`` mode writes valid JSON; gpu.py skips cleanly without CUDA.

These check the scripts, not the speed (the figures live in docs/performance.md). The quick modes time toy
models once, in this process (the libraries are already imported), except gpu.py, which is run as a
program so that its exit status and its behaviour with no visible GPU are what is checked.
"""
from __future__ import annotations

import importlib
import json
import os
import py_compile
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ("_common.py", "throughput.py", "mfu.py", "gpu.py", "attention.py")


@pytest.fixture
def bench(monkeypatch):
    """Import benchmark modules by name; restore torch's thread count, which the scripts set."""
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    yield lambda name: importlib.import_module(name)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_compile(script: str, tmp_path) -> None:
    py_compile.compile(str(BENCH / script), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_interleaved_alternates_order_and_ratios_compare_like_rounds(bench) -> None:
    common = bench("_common")
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: (order.append("b"), time.sleep(0.002))}
    timings = common.interleaved(calls, items=4, warmup=1, min_rounds=4, max_rounds=4, budget_s=0)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then A B | B A | ...
    assert all(len(t.wall) == len(t.cpu) == 4 for t in timings.values())
    slow, fast = common.Timing(2, wall=[2.0, 4.0, 2.0], cpu=[1.0, 1.0, 1.0]), common.Timing(2, wall=[1.0, 2.0, 1.0],
                                                                                            cpu=[0.5, 0.5, 0.5])
    r = common.ratios({"fast": fast, "slow": slow}, "slow")["fast"]
    assert r == {"median": 2.0, "paired": 2.0, "cpu": 2.0, "fastest": 2.0, "paired_90": [2.0, 2.0]}


def test_paired_interval_holds_one_only_when_the_rounds_disagree(bench) -> None:
    common = bench("_common")
    timm = common.Timing(1, wall=[1.0] * 8, cpu=[1.0] * 8)
    steady = common.Timing(1, wall=[0.9, 0.91, 0.9, 0.92, 0.9, 0.91, 0.9, 0.92], cpu=[1.0] * 8)
    spiky = common.Timing(1, wall=[0.8, 1.3, 0.85, 1.25, 0.8, 1.3, 0.9, 1.2], cpu=[1.0] * 8)
    low, high = common.ratios({"steady": steady, "timm": timm}, "timm")["steady"]["paired_90"]
    assert 1.0 < low <= high < 1.12  # every round faster: the interval excludes parity
    r = common.ratios({"spiky": spiky, "timm": timm}, "timm")["spiky"]
    assert r["paired_90"][0] < 1.0 < r["paired_90"][1]  # half the rounds each way: it cannot tell them apart
    assert r["fastest"] == 1.25  # 1.0 / 0.8


def test_throughput_quick_writes_json(bench, tmp_path) -> None:
    throughput = bench("throughput")
    out = tmp_path / "throughput.json"
    assert throughput.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["quick"] is True and len(data["machine"]["loadavg_start"]) == 3
    assert [c["case"] for c in data["cases"]] == throughput.QUICK_CASES.split(",")
    for case in data["cases"]:
        assert case["sides"]["timm"]["images_per_s"] > 0
        assert set(case["ratio_vs_timm"]) >= {"vitlab"}
        assert case["flops_per_image"]["architecture"] > 0
    train, infer = data["cases"]
    assert list(train["sides"]) == ["vitlab", "vitlab_cls_only", "timm"]  # the same-work side first
    assert list(train["ratio_vs_timm"])[0] == "vitlab"
    assert set(infer["sides"]) == {"vitlab", "timm", "hf"}
    assert train["flops_per_image"]["cls_only"] < train["flops_per_image"]["architecture"]


def test_attention_quick_writes_json(bench, tmp_path) -> None:
    attention = bench("attention")
    out = tmp_path / "attention.json"
    assert attention.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [case["keys"] for case in data["cases"]] == list(attention.QUICK_KEYS)
    for case in data["cases"]:
        assert case["ms"]["explicit"] > 0 and case["ms"]["sdpa"] > 0 and case["explicit_over_sdpa"]["median"] > 0


def test_throughput_sdpa_side_runs_every_attention_through_sdpa(bench, monkeypatch) -> None:
    throughput, common = bench("throughput"), bench("_common")
    import torch.nn.functional as F

    spec = dict(common.fmnist_tiny_spec()[0], **throughput.QUICK_SPEC)
    model = common.build_ours(spec)
    images, labels = common.synthetic_batch(spec, 2)
    step = common.train_step(model, images, labels, "fp32")
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    step()
    assert calls == []  # 17 keys on a CPU in fp32: the explicit product
    throughput.through_sdpa(step)()
    assert len(calls) == spec["depth"]
    step()
    assert len(calls) == spec["depth"]  # the switch is undone after the call


def test_throughput_explicit_side_keeps_the_default_when_the_probe_picks_sdpa(bench, tmp_path, monkeypatch) -> None:
    throughput = bench("throughput")
    import torch.nn.functional as F

    monkeypatch.setattr(throughput, "choose_attention", lambda probe, dtype: "sdpa")  # as on the Xeon in fp32
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    out = tmp_path / "throughput.json"
    assert throughput.main(["--quick", "--explicit", "--only", "fmnist_tiny-train-fp32", "--out", str(out)]) == 0
    case = json.loads(out.read_text())["cases"][0]
    assert case["attention"] == "sdpa"
    assert list(case["sides"]) == ["vitlab", "vitlab_cls_only", "vitlab_explicit", "timm"]
    assert "vitlab_explicit" in case["ratio_vs_timm"]
    common = bench("_common")
    spec = dict(common.fmnist_tiny_spec()[0], **throughput.QUICK_SPEC)
    images, labels = common.synthetic_batch(spec, 2)
    step = common.train_step(common.build_ours(spec), images, labels, "fp32")
    calls.clear()
    throughput.under_attention("explicit", step)()
    assert calls == []  # the default thresholds: 17 keys in fp32 take the explicit product


def test_mfu_quick_writes_json(bench, tmp_path) -> None:
    mfu = bench("mfu")
    out = tmp_path / "mfu.json"
    assert mfu.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in ("peak_gflops", "peak_gflops_cpu"):
        assert set(data[key]) == {"fp32", "bf16"} and min(data[key].values()) > 0
    assert {row["layout"] for row in data["gemm_survey"]["bf16"]} == {"nn", "nt", "tn", "tt"}
    for case in data["cases"]:
        for side in case["sides"].values():
            assert 0 < side["mfu"] and 0 < side["paired_mfu"] and 0 < side["mfu_cpu"]


def test_gpu_script_skips_cleanly_without_cuda(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU visible, even on a machine that has one
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["skipped"] is True and "CUDA" in data["reason"]


def test_gpu_script_quick_runs_its_path_on_the_cpu(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--quick", "--no-compile", "--threads", "1",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["peak"]["published_bf16_dense_tflops"] is None
    (toy,) = data["results"]
    assert toy["train"]["images_per_s"] > 0 and len(toy["train"]["step_seconds"]) == 3
    assert 0 < toy["train"]["mfu_measured"] and toy["train"]["mfu_published"] is None
    assert toy["infer"]["images_per_s"] > 0


def test_gpu_published_peaks_by_device_name(bench) -> None:
    gpu = bench("gpu")
    assert gpu.published_peak("NVIDIA H100 80GB HBM3") == ("H100", 989.0)  # SXM
    assert gpu.published_peak("NVIDIA H100 PCIe") == ("H100 PCIe", 756.0)
    assert gpu.published_peak("NVIDIA H200") == ("H200", 989.0)
    assert gpu.published_peak("NVIDIA A100-SXM4-80GB") == ("A100", 312.0)
    assert gpu.published_peak("NVIDIA L40S") == ("L40S", 362.0)
    assert gpu.published_peak("NVIDIA L4") == ("L4", 121.0)
    assert gpu.published_peak("Tesla T4") is None


def test_gpu_timing_window_waits_once(bench, monkeypatch) -> None:
    """On CUDA the host waits only after the last step of a window (events recorded in between)."""
    gpu = bench("gpu")
    log = []

    class Event:
        def __init__(self, enable_timing: bool) -> None:
            self.at = None

        def record(self) -> None:
            log.append("record")
            self.at = len(log)

        def synchronize(self) -> None:
            log.append("sync")

        def elapsed_time(self, other) -> float:
            return 1000.0 * (other.at - self.at)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    times = gpu.window_seconds(lambda: log.append("step"), 3, "cuda")
    assert log == ["record", "step", "record", "step", "record", "step", "record", "sync"]
    assert times == [2.0, 2.0, 2.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_script_quick_on_a_gpu(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--quick", "--no-compile", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    (toy,) = data["results"]
    assert toy["train"]["images_per_s"] > 0 and 0 < toy["train"]["mfu_measured"] < 1.5
    assert toy["infer"]["images_per_s"] > 0
