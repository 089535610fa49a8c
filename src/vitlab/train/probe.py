"""Timing a run's own model at start, and remembering the answer: what the precision and attention probes share.

A probe times a few forward+backward steps of the actual model under two settings, interleaved (A B B A ...), and
keeps the median of each. It does not take an optimiser step, clears the gradients afterwards and restores the
random streams, so a seeded run trains the same whatever the probe measured. Timings are cached per (CPU model,
thread count, torch version, model shapes, batch, and what the caller adds) in the vitlab cache directory, so a
machine probes each model once and every later run of it makes the same choice.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models.weights import atomic_write

log = logging.getLogger(__name__)

# The probe's batch: the run's micro-batch, at most this many images (bounds the probe's time on big models).
PROBE_MAX_BATCH = 32


@dataclass(frozen=True)
class ProbeInput:
    """What a probe needs: the model to time and the shape of one micro-batch."""

    model: nn.Module
    batch: int
    in_chans: int
    img_size: int
    num_classes: int


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_batch(probe: ProbeInput) -> int:
    return max(1, min(probe.batch, PROBE_MAX_BATCH))


def probe_key(probe: ProbeInput, *extra: Any) -> str:
    """The cache key: CPU model, threads, torch version, the model's parameter shapes, the batch shape, ``extra``."""
    shapes = [(name, tuple(p.shape)) for name, p in probe.model.named_parameters()]
    fields = [cpu_model(), torch.get_num_threads(), torch.__version__, type(probe.model).__name__, shapes,
              probe_batch(probe), probe.in_chans, probe.img_size, probe.num_classes, *extra]
    return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:24]


def time_interleaved(probe: ProbeInput, settings: dict[str, Callable[[], AbstractContextManager]],
                     steps: int) -> dict[str, float]:
    """``{"<setting>_s": median seconds}`` of a forward+backward step under each setting (a context factory),
    after one untimed warm-up step each (oneDNN primitive caches, allocator); the order alternates per round."""
    model = probe.model
    device = next(model.parameters()).device
    batch = probe_batch(probe)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, probe.in_chans, probe.img_size, probe.img_size, generator=generator).to(device)
    labels = torch.randint(0, probe.num_classes, (batch,), generator=generator).to(device)

    def step(name: str) -> float:
        start = time.perf_counter()
        with settings[name]():
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        return time.perf_counter() - start

    names = list(settings)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.random.fork_rng(devices=[]):
        try:
            for name in names:
                step(name)
            for index in range(steps):
                for name in names if index % 2 == 0 else names[::-1]:
                    times[name].append(step(name))
        finally:
            model.zero_grad(set_to_none=True)
    return {f"{name}_s": sorted(values)[len(values) // 2] for name, values in times.items()}


def cached_timings(path: Path, key: str, required: set[str], measure: Callable[[], dict], what: str) -> dict:
    """The timings under ``key`` in the JSON cache ``path``, measured (and written atomically) when absent."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    entries = entries if isinstance(entries, dict) else {}
    if isinstance(entries.get(key), dict) and required <= set(entries[key]):
        return entries[key]
    log.info("%s: timing this model (once per CPU and model; cached in %s)", what, path)
    timings = measure()
    entries[key] = dict(timings, cpu=cpu_model(), threads=torch.get_num_threads())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(entries, indent=1)))
    except OSError as error:  # a read-only cache: the verdict still holds for this run
        log.warning("%s: could not cache the probe in %s (%s)", what, path, error)
    return timings


def agree_across_ranks(choice: str) -> str:
    """Rank 0's choice on every rank (each rank probes alone and could disagree by noise)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return choice
    chosen = [choice]
    torch.distributed.broadcast_object_list(chosen, src=0)
    return chosen[0]
