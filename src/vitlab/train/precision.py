"""The numeric precision a run trains in (fp32, bf16 autocast, fp16 with loss scaling), and what ``auto`` picks.

``auto`` on a GPU is bf16 where the GPU has it, else fp16 with loss scaling. On a CPU the answer depends on the
CPU and on the model: bf16 only pays where the CPU multiplies bf16 natively (AVX512-BF16 or AMX, and oneDNN
agrees); without that PyTorch's reference bf16 kernels are several times slower than fp32, so such CPUs keep fp32
without asking. Where bf16 is native, whether it is faster for *this* model and batch is measured, not assumed:
a probe times a few forward+backward steps of the actual model in fp32 and in bf16 autocast, interleaved, and bf16
is chosen only when it is at least ``BF16_MIN_SPEEDUP`` times faster (bf16 costs precision, so it must pay
clearly, beyond the noise of a shared machine). The verdict is cached per (CPU model, thread count, torch version,
model shapes, batch) in the vitlab cache directory, so the probe runs once per machine and model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from vitlab.models.kernels import cpu_has_native_bf16
from vitlab.train.probe import ProbeInput, agree_across_ranks, cached_timings, probe_key, time_interleaved
from vitlab.weights.cache import cache_dir

log = logging.getLogger(__name__)

# bf16 must be at least this much faster than fp32 in the probe to be chosen.
BF16_MIN_SPEEDUP = 1.10
# Timed forward+backward steps per dtype (after one untimed warm-up step each); the median is used.
PROBE_STEPS = 3
CACHE_FILE = "precision-probe.json"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None  # autocast dtype (None: full precision)
    scaler: bool  # loss scaling (fp16 only)


def resolve_precision(name: str, device: torch.device, probe: Optional[ProbeInput] = None) -> Precision:
    """The precision for ``train.precision=name`` on ``device``.

    ``auto``: bf16 on GPUs that support it, fp16 with loss scaling on older GPUs; on a CPU, :func:`choose_cpu`
    (bf16 only on CPUs with native bf16 where the probe of ``probe.model`` measures it faster; fp32 otherwise,
    and fp32 when no model is given).
    """
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = choose_cpu(cpu_flags(), cpu_has_native_bf16(),
                              None if probe is None else lambda: cached_probe(probe))
            name = agree_across_ranks(name)
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; using fp16 with loss scaling instead")
        name = "fp16"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return Precision(name, dtype, scaler=name == "fp16")


def choose_cpu(flags: set[str], onednn_bf16: bool, probe: Optional[Callable[[], dict]]) -> str:
    """``"bf16"`` or ``"fp32"`` for a CPU with these ``/proc/cpuinfo`` flags.

    fp32 unless the CPU has native bf16 (an AVX512-BF16 or AMX flag *and* oneDNN's bf16 support) and the probe's
    timings (``{"fp32_s": ..., "bf16_s": ...}``, seconds per step) show bf16 at least ``BF16_MIN_SPEEDUP`` faster.
    A probe that is missing or fails keeps fp32.
    """
    if not onednn_bf16 or not flags.intersection(NATIVE_BF16_FLAGS) or probe is None:
        return "fp32"
    try:
        timings = probe()
    except Exception as error:  # noqa: BLE001 - an op without a bf16 kernel: the run still trains, in fp32
        log.warning("precision=auto: the bf16 probe failed (%s: %s); training in fp32", type(error).__name__, error)
        return "fp32"
    speedup = timings["fp32_s"] / timings["bf16_s"]
    choice = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    log.info("precision=auto: bf16 step %.3fx the speed of fp32 on this CPU and model -> %s", speedup, choice)
    return choice


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist, e.g. macOS)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cached_probe(probe: ProbeInput, cache: Optional[Path] = None) -> dict:
    """:func:`time_probe`'s timings, read from (or written to) the cache file."""
    return cached_timings(cache or cache_dir() / CACHE_FILE, probe_key(probe), {"fp32_s", "bf16_s"},
                          lambda: time_probe(probe), "precision=auto")


def time_probe(probe: ProbeInput, steps: int = PROBE_STEPS) -> dict:
    """Median seconds of a forward+backward step in fp32 and in bf16 autocast, interleaved (A B B A ...).

    The model's weights are not changed (no optimiser step), its gradients are cleared afterwards, and the random
    number streams are restored, so a seeded run trains the same with ``auto`` as with the precision it picks.
    """
    device = next(probe.model.parameters()).device.type
    return time_interleaved(probe, {
        "fp32": lambda: torch.autocast(device, enabled=False),
        "bf16": lambda: torch.autocast(device, dtype=torch.bfloat16),
    }, steps)
