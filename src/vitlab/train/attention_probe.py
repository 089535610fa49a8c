"""Whether a run's attention takes the explicit product or SDPA on this CPU: measured, once per machine and model.

``vitlab.models.kernels.attention`` computes short sequences on a CPU as an explicit ``softmax(q k^T) v`` because
PyTorch's CPU flash-attention kernel was slower there on the AMD CPUs where the thresholds were measured, on the
product alone. Inside a model the answer can differ (on an Intel Xeon with AMX the tiny Fashion-MNIST ViT's fp32
step ran faster through SDPA: docs/performance.md), so the thresholds are only a default. Where a model takes the
explicit path at all, this probe times forward+backward steps of the actual model both ways, interleaved, and keeps
the default unless SDPA is at least ``SDPA_MIN_SPEEDUP`` faster (a switch must pay beyond the noise, and the default
was measured too). The verdict is cached per (CPU model, threads, torch version, model shapes, batch, precision)
beside the precision probe's, so every run of a model on a machine uses the same kernels. The two paths compute the
same function in a different summation order.
"""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from vitlab.models import kernels
from vitlab.train.probe import ProbeInput, agree_across_ranks, cached_timings, probe_key, time_interleaved
from vitlab.weights.cache import cache_dir

log = logging.getLogger(__name__)

# SDPA replaces the explicit product only when the probe measures it at least this much faster.
SDPA_MIN_SPEEDUP = 1.05
# Timed forward+backward steps per path (after one untimed warm-up step each); the median is used.
PROBE_STEPS = 3
CACHE_FILE = "attention-probe.json"
EXPLICIT, SDPA = "explicit", "sdpa"


def choose_attention(probe: ProbeInput, dtype: Optional[torch.dtype], cache: Optional[Path] = None) -> str:
    """``"explicit"`` (the default thresholds) or ``"sdpa"`` (every attention through SDPA) for this model.

    Only a CPU model whose attention takes the explicit path at this batch and precision is timed; everything
    else keeps the default without a measurement. A probe that fails keeps the default.
    """
    device = next(probe.model.parameters()).device
    if device.type != "cpu" or not takes_explicit_path(probe, dtype):
        return EXPLICIT
    try:
        timings = _cached(probe, dtype, cache)
    except Exception as error:  # noqa: BLE001 - the default path still trains
        log.warning("attention: the probe failed (%s: %s); keeping the explicit product", type(error).__name__,
                    error)
        return EXPLICIT
    speedup = timings["explicit_s"] / timings["sdpa_s"]
    choice = agree_across_ranks(SDPA if speedup >= SDPA_MIN_SPEEDUP else EXPLICIT)
    log.info("attention: SDPA step %.3fx the speed of the explicit product on this CPU and model -> %s",
             speedup, choice)
    return choice


def attention_kernels(choice: str) -> AbstractContextManager:
    """The attention kernels of ``choice`` while active (what the engine and the benchmarks run under)."""
    return kernels.sdpa_attention(choice == SDPA)


def takes_explicit_path(probe: ProbeInput, dtype: Optional[torch.dtype]) -> bool:
    """Whether any attention of the model takes the explicit product (one forward of two images, no gradients)."""
    images = torch.zeros(2, probe.in_chans, probe.img_size, probe.img_size)
    with (kernels.recording_attention_paths() as paths, torch.no_grad(), _autocast(dtype),
          torch.random.fork_rng(devices=[])):  # dropout draws do not move the run's streams
        probe.model(images.to(next(probe.model.parameters()).device))
    return any(paths)


def time_probe(probe: ProbeInput, dtype: Optional[torch.dtype], steps: int = PROBE_STEPS) -> dict:
    """Median seconds of a forward+backward step with the explicit product and through SDPA, interleaved, in the
    run's precision (``dtype``: its autocast dtype, None for fp32)."""
    return time_interleaved(probe, {
        path: lambda path=path: _setting(path, dtype) for path in (EXPLICIT, SDPA)
    }, steps)


def _cached(probe: ProbeInput, dtype: Optional[torch.dtype], cache: Optional[Path]) -> dict:
    return cached_timings(cache or cache_dir() / CACHE_FILE, probe_key(probe, str(dtype or torch.float32)),
                          {"explicit_s", "sdpa_s"}, lambda: time_probe(probe, dtype), "attention")


def _autocast(dtype: Optional[torch.dtype]) -> torch.autocast:
    return torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@contextmanager
def _setting(path: str, dtype: Optional[torch.dtype]) -> Iterator[None]:
    with attention_kernels(path), _autocast(dtype):
        yield
