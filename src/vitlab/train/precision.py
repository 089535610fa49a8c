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

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models.kernels import cpu_has_native_bf16
from vitlab.models.weights import atomic_write
from vitlab.weights.cache import cache_dir

log = logging.getLogger(__name__)

# bf16 must be at least this much faster than fp32 in the probe to be chosen.
BF16_MIN_SPEEDUP = 1.10
# The probe's batch: the run's micro-batch, at most this many images (bounds the probe's time on big models).
PROBE_MAX_BATCH = 32
# Timed forward+backward steps per dtype (after one untimed warm-up step each); the median is used.
PROBE_STEPS = 3
CACHE_FILE = "precision-probe.json"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None  # autocast dtype (None: full precision)
    scaler: bool  # loss scaling (fp16 only)


@dataclass(frozen=True)
class ProbeInput:
    """What the probe needs: the model to time and the shape of one micro-batch."""

    model: nn.Module
    batch: int
    in_chans: int
    img_size: int
    num_classes: int


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
            name = _agree_across_ranks(name)
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


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def probe_key(probe: ProbeInput) -> str:
    """The cache key: CPU model, threads, torch version, the model's parameter shapes and the batch shape."""
    shapes = [(name, tuple(p.shape)) for name, p in probe.model.named_parameters()]
    fields = [cpu_model(), torch.get_num_threads(), torch.__version__, type(probe.model).__name__, shapes,
              _probe_batch(probe), probe.in_chans, probe.img_size, probe.num_classes]
    return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:24]


def cached_probe(probe: ProbeInput, cache: Optional[Path] = None) -> dict:
    """:func:`time_probe`'s timings, read from (or written to) the cache file."""
    path = cache or cache_dir() / CACHE_FILE
    key = probe_key(probe)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    if isinstance(entries, dict) and isinstance(entries.get(key), dict) and {"fp32_s", "bf16_s"} <= set(entries[key]):
        return entries[key]
    log.info("precision=auto: timing fp32 against bf16 on this model (once per CPU and model; cached in %s)", path)
    timings = time_probe(probe)
    entries = entries if isinstance(entries, dict) else {}
    entries[key] = dict(timings, cpu=cpu_model(), threads=torch.get_num_threads())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(entries, indent=1)))
    except OSError as error:  # a read-only cache: the verdict still holds for this run
        log.warning("precision=auto: could not cache the probe in %s (%s)", path, error)
    return timings


def time_probe(probe: ProbeInput, steps: int = PROBE_STEPS) -> dict:
    """Median seconds of a forward+backward step in fp32 and in bf16 autocast, interleaved (A B B A ...).

    The model's weights are not changed (no optimiser step), its gradients are cleared afterwards, and the random
    number streams are restored, so a seeded run trains the same with ``auto`` as with the precision it picks.
    """
    model = probe.model
    device = next(model.parameters()).device
    batch = _probe_batch(probe)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, probe.in_chans, probe.img_size, probe.img_size, generator=generator).to(device)
    labels = torch.randint(0, probe.num_classes, (batch,), generator=generator).to(device)

    def step(dtype: str) -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):
        try:
            step("fp32"), step("bf16")  # warm-up: oneDNN primitive caches, allocator
            for index in range(steps):
                for dtype in ("fp32", "bf16") if index % 2 == 0 else ("bf16", "fp32"):
                    times[dtype].append(step(dtype))
        finally:
            model.zero_grad(set_to_none=True)
    return {f"{dtype}_s": sorted(values)[len(values) // 2] for dtype, values in times.items()}


def _probe_batch(probe: ProbeInput) -> int:
    return max(1, min(probe.batch, PROBE_MAX_BATCH))


def _agree_across_ranks(name: str) -> str:
    """Rank 0's choice on every rank (each rank probes alone and could disagree by noise)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return name
    choice = [name]
    torch.distributed.broadcast_object_list(choice, src=0)
    return choice[0]
