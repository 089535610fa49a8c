"""Shared timing for the benchmarks: warm-up, interleaved rounds, medians, machine facts, JSON out.

Why interleaved: the CPU machines these run on are shared, so absolute speed drifts by 2x within a minute. Two
implementations timed one after the other see the same drift only if they alternate (A B B A A B ...); the ratio
of their medians, and the median of the per-round ratios, are then meaningful even when the absolute figures are
not. Each round also records the process CPU time, which counts only the time this process was scheduled: a
second, load-robust measure of the work done (it includes OpenMP threads spinning while they wait for each other,
so it is most faithful with ``--threads 1``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


# -- measuring ------------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Per-round seconds (wall and CPU) of one side; ``items`` = images per call."""

    items: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    warmup_wall: list[float] = field(default_factory=list)

    def rate(self, which: str = "wall") -> float:
        """Median items per second over the rounds."""
        return self.items / statistics.median(getattr(self, which))

    def summary(self) -> dict[str, Any]:
        return {
            "images_per_s": round(self.rate("wall"), 4),
            "images_per_cpu_s": round(self.rate("cpu"), 4),
            "round_seconds": [round(t, 4) for t in self.wall],
            "round_cpu_seconds": [round(t, 4) for t in self.cpu],
            "warmup_seconds": [round(t, 4) for t in self.warmup_wall],
            "rounds": len(self.wall),
        }


def interleaved(
    calls: dict[str, Callable[[], Any]],
    *,
    items: int,
    warmup: int = 1,
    min_rounds: int = 3,
    max_rounds: int = 20,
    budget_s: float = 30.0,
) -> dict[str, Timing]:
    """Time each call round-robin (order reversed every other round) until ``budget_s`` or ``max_rounds``.

    ``warmup`` untimed calls each first (allocator, oneDNN primitive caches, compilation). At least
    ``min_rounds`` rounds run whatever the budget. GC is off while timing so a collection lands on no one side.
    """
    names = list(calls)
    timings = {name: Timing(items) for name in names}
    for name in names:
        for _ in range(warmup):
            start = time.perf_counter()
            calls[name]()
            timings[name].warmup_wall.append(time.perf_counter() - start)
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for index in range(max_rounds):
            if index >= min_rounds and time.perf_counter() - started > budget_s:
                break
            for name in names if index % 2 == 0 else names[::-1]:
                wall, cpu = time.perf_counter(), time.process_time()
                calls[name]()
                timings[name].wall.append(time.perf_counter() - wall)
                timings[name].cpu.append(time.process_time() - cpu)
    finally:
        gc.enable()
    return timings


def ratios(timings: dict[str, Timing], baseline: str) -> dict[str, dict[str, Any]]:
    """Speed of each side relative to ``baseline`` (> 1: faster), four ways, and how far noise could move one.

    ``median``: ratio of the median rates; ``paired``: median over rounds of the per-round ratio (each round's two
    calls ran seconds apart, so they saw nearly the same load); ``cpu``: ratio of median CPU-time rates;
    ``fastest``: ratio of the fastest rounds. A shared host only ever adds time to a round (another tenant's
    work on the same memory and caches shows up as CPU time too, so ``cpu`` does not remove it), so the fastest
    round of each side is the closest to its own cost, at the risk of a lucky round. ``paired_90``: a 90%
    bootstrap interval of ``paired`` (rounds resampled with replacement, fixed seed); an interval that holds 1.0
    means this run cannot tell the two sides apart.
    """
    base = timings[baseline]
    out: dict[str, dict[str, Any]] = {}
    for name, t in timings.items():
        if name == baseline:
            continue
        paired = [b / s for s, b in zip(t.wall, base.wall)]
        out[name] = {
            "median": round(t.rate("wall") / base.rate("wall"), 4),
            "paired": round(statistics.median(paired), 4),
            "cpu": round(t.rate("cpu") / base.rate("cpu"), 4),
            "fastest": round(min(base.wall) / min(t.wall), 4),
            "paired_90": [round(x, 4) for x in bootstrap_median_interval(paired)],
        }
    return out


def bootstrap_median_interval(values: list[float], level: float = 0.90, draws: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of the median of ``values`` over ``draws`` resamples with replacement."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    tail = (1.0 - level) / 2
    return medians[int(tail * (draws - 1))], medians[int((1.0 - tail) * (draws - 1))]


# -- environment ----------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions that decide which GEMM kernels run (AVX2, AVX-512, bf16, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    from vitlab.models.kernels import cpu_has_native_bf16

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16_matmul": cpu_has_native_bf16(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
    for module in ("timm", "transformers"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# -- command line and output ----------------------------------------------------------------------------------------
def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny models and one round: a smoke test in seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / default_out, help="JSON file to write")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1; 0 = torch's default). On a shared, oversubscribed machine every "
             "OpenMP region waits for its slowest descheduled thread: measured here, a toy training step took "
             "1.7 s with 2 threads and 0.03 s with 1",
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed rounds per case")
    parser.add_argument("--only", default=None, help="comma-separated case names to run (see the JSON)")
    return parser


def apply_threads(threads: Optional[int]) -> None:
    if threads:
        torch.set_num_threads(threads)


def selected(name: str, only: Optional[str]) -> bool:
    return only is None or name in {part.strip() for part in only.split(",")}


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically (a reader never sees half a file), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload.setdefault("command", " ".join([Path(sys.executable).name] + sys.argv))
    payload.setdefault("finished", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def log(message: str) -> None:
    """Progress on stderr (stdout carries the final summary only)."""
    print(message, file=sys.stderr, flush=True)


# -- the models raced -----------------------------------------------------------------------------------------------
# One architecture spec (vitlab ViTConfig fields) is built three ways. Table 1 sizes come from the registry.
def vit_spec(name: str, *, img_size: int = 224, num_classes: int = 1000, in_chans: int = 3, **overrides: Any) -> dict:
    from vitlab.models.registry import model_spec

    _, fields = model_spec(name)
    fields.update(img_size=img_size, num_classes=num_classes, in_chans=in_chans, **overrides)
    return fields


# The Fashion-MNIST tiny ViT the CPU races use: a plain ViT (7x7 patches, 6 blocks of width 128, MLP 256, 4 heads; 17
# tokens on 28x28 grey images), batch 64. It was the fmnist-vit-tiny preset's model until that preset took the ResNet
# stem of the hybrids, which timm's VisionTransformer cannot be given at this width; the race keeps the plain model.
FMNIST_TINY_OVERRIDES = dict(depth=6, width=128, mlp_dim=256, num_heads=4)
FMNIST_TINY_BATCH = 64


def fmnist_tiny_spec() -> tuple[dict, int, str]:
    """The Fashion-MNIST tiny ViT (``FMNIST_TINY_OVERRIDES`` on ``vit_ti7``), its batch size, and its name."""
    spec = vit_spec("vit_ti7", img_size=28, num_classes=10, in_chans=1, **FMNIST_TINY_OVERRIDES)
    return spec, FMNIST_TINY_BATCH, "fmnist tiny ViT (vit_ti7, depth 6, width 128)"


def build_timm(spec: dict) -> torch.nn.Module:
    """timm's VisionTransformer with the spec's architecture (exact GELU, LayerNorm eps 1e-6, class token)."""
    from timm.models.vision_transformer import VisionTransformer

    if spec.get("classifier", "token") != "token":
        raise ValueError("the benchmark races class-token ViTs only")
    return VisionTransformer(
        img_size=tuple(spec["img_size"]) if not isinstance(spec["img_size"], int) else spec["img_size"],
        patch_size=spec["patch_size"], in_chans=spec["in_chans"], num_classes=spec["num_classes"],
        embed_dim=spec["width"], depth=spec["depth"], num_heads=spec["num_heads"],
        mlp_ratio=spec["mlp_dim"] / spec["width"], qkv_bias=True, global_pool="token",
    )


def build_ours(spec: dict, *, gelu: str = "exact", like: Optional[torch.nn.Module] = None) -> torch.nn.Module:
    """Our ViT for the spec; with ``like`` (a timm twin) it takes that model's weights, so both compute alike."""
    from vitlab.models.registry import build_from_config

    fields = {k: v for k, v in spec.items()}
    fields["gelu"] = gelu
    model = build_from_config("vit", fields)
    if like is not None:
        from vitlab.interop.timm import from_timm

        model.load_state_dict(from_timm(like).state_dict())
    return model


def cls_only_forward(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> logits`` with the last block for the class token only (what the classification objective asks)."""
    return lambda images: model(images, last_block_cls_only=True)


def build_hf(spec: dict) -> torch.nn.Module:
    """Hugging Face ViTForImageClassification with the spec's architecture and SDPA attention."""
    from transformers import ViTConfig, ViTForImageClassification

    size = spec["img_size"] if isinstance(spec["img_size"], int) else spec["img_size"][0]
    config = ViTConfig(
        hidden_size=spec["width"], num_hidden_layers=spec["depth"], num_attention_heads=spec["num_heads"],
        intermediate_size=spec["mlp_dim"], image_size=size, patch_size=spec["patch_size"],
        num_channels=spec["in_chans"], num_labels=spec["num_classes"], hidden_act="gelu", layer_norm_eps=1e-6,
        attn_implementation="sdpa",
    )
    return ViTForImageClassification(config)


def forward_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> logits`` for our, timm's and Hugging Face's models alike."""
    if type(model).__name__ == "ViTForImageClassification":
        return lambda images: model(pixel_values=images).logits
    return model


def autocast(dtype: str, device: str = "cpu"):
    """bf16 autocast (as a training engine would use it) or nothing for fp32."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")


def train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: str,
               device: str = "cpu", fused: bool = True, last_block_cls_only: bool = False) -> Callable[[], None]:
    """One optimiser step (forward, cross-entropy, backward, AdamW): the same loop for every side.

    ``last_block_cls_only``: our ViT computes its last block for the class token only, as vitlab's
    classification objective asks it to (less work than timm's full pass: not a like-for-like comparison)."""
    import torch.nn.functional as F

    model.train()
    forward = cls_only_forward(model) if last_block_cls_only else forward_fn(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(dtype, device):
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()

    return step


def infer_step(model: torch.nn.Module, images: torch.Tensor, dtype: str, device: str = "cpu") -> Callable[[], None]:
    """One forward pass without autograd. bf16 inference holds the weights and the input in bf16 (the model is
    converted in place), as a model served in bf16 is: autocast would cast every fp32 weight again on each call,
    a cost that grows with the weights, not the batch (profile in docs/performance.md)."""
    model.eval()
    if dtype == "bf16":
        model.to(torch.bfloat16)
        images = images.to(torch.bfloat16)
    forward = forward_fn(model)

    def step() -> None:
        with torch.inference_mode():
            forward(images)

    return step


# How the bf16 inference cases hold their weights (recorded in the JSON: results before this field used autocast
# over fp32 weights).
BF16_INFERENCE = "bf16 weights and input, no autocast"


def synthetic_batch(spec: dict, batch: int, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = spec["img_size"] if not isinstance(spec["img_size"], int) else (spec["img_size"],) * 2
    images = torch.randn(batch, spec["in_chans"], *size, generator=generator)
    labels = torch.randint(0, spec["num_classes"], (batch,), generator=generator)
    return images.to(device), labels.to(device)


def model_flops(spec: dict, *, train: bool) -> dict[str, float]:
    """FLOPs per image counted from the architecture (2 per MAC; training = 3x forward).

    ``architecture``: the full forward pass (``model(x)``, the figure papers publish); ``cls_only``: what the
    classification objective runs (``last_block_cls_only=True``: the last block for the class token only; equal
    to ``architecture`` for GAP models).
    """
    from vitlab.models.flops import count_model_macs
    from vitlab.models.registry import build_from_config

    factor = 6 if train else 2
    out = {}
    with torch.device("meta"):
        model = build_from_config("vit", dict(spec))
        size = spec["img_size"] if not isinstance(spec["img_size"], int) else (spec["img_size"],) * 2
        images = torch.empty(1, spec["in_chans"], *size)
    for key, cls_only in (("architecture", False), ("cls_only", True)):
        out[key] = float(count_model_macs(model, images, last_block_cls_only=cls_only) * factor)
    return out
