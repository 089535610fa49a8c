"""ViT-B/16 and ViT-L/16 at 224 on one CUDA GPU: bf16 training and inference images/s and MFU.

Training is the recipe a GPU user would run: fp32 master weights, bf16 autocast, attention through SDPA (flash
kernels), ``torch.compile`` of the model, fused AdamW, synthetic data already on the device (this measures the
model, not a loader). Inference is the compiled model under ``inference_mode`` with bf16 autocast.

MFU is reported against two peaks: the GPU's *published* bf16 dense tensor-core peak, looked up by device name
in ``PUBLISHED_BF16_DENSE_TFLOPS`` (the convention of published MFU figures; ``null`` for a GPU not in the
table), and the best *measured* large bf16 ``torch.mm`` (8192 cubed). FLOPs are the architecture's (2 per MAC,
training = 3x forward) unless the class-token-only last block is used, whose skipped work is not credited.

No host synchronisation happens inside a timed window: the steps are queued back to back with a CUDA event
recorded after each, and the host waits once, at the end of the window; the per-step times are read from the
events afterwards. The training step itself reads nothing back to the host (no ``.item()``, no loss printing).

    python benchmarks/gpu.py                              # ViT-B/16 and ViT-L/16, batch 256 training, 512 inference
    python benchmarks/gpu.py --models vit_b16 --batch 128 --no-compile
    python benchmarks/gpu.py --quick --no-compile         # a toy ViT, a few steps: a smoke test (on CPU without CUDA)

Without CUDA the full run writes ``{"skipped": true, ...}`` and exits 0; ``--quick`` then runs the same code path
on the CPU (times by the wall clock; no published peak). Writes ``benchmarks/results/gpu.json``.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

import _common as C  # noqa: E402

# Published bf16 dense (no sparsity) tensor-core peaks in TFLOP/s, by a fragment of ``torch.cuda.get_device_name()``;
# the first fragment found in the name wins, so the specific variants come before the general ones.
PUBLISHED_BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),  # SXM and PCIe alike
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
)


def published_peak(device_name: str) -> Optional[tuple[str, float]]:
    """``(matched fragment, TFLOP/s)`` of the published bf16 dense peak for a device name, or None if unknown."""
    for fragment, tflops in PUBLISHED_BF16_DENSE_TFLOPS:
        if fragment.lower() in device_name.lower():
            return fragment, tflops
    return None


def window_seconds(call: Callable[[], Any], steps: int, device: str) -> list[float]:
    """Seconds of each of ``steps`` back-to-back calls; on CUDA the host waits only once, after the last one."""
    if device != "cuda":
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return times
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    events[0].record()
    for index in range(steps):
        call()
        events[index + 1].record()
    events[-1].synchronize()  # the one host synchronisation of the window
    return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)]


def bf16_peak(size: int, repeats: int, device: str) -> dict[str, Any]:
    """The best measured bf16 ``torch.mm`` rate (a sanity check of the published figure)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    out = torch.empty(size, size, device=device, dtype=torch.bfloat16)
    call = lambda: torch.mm(a, b, out=out)  # noqa: E731
    window_seconds(call, 3, device)  # warm-up: cuBLAS heuristics, clocks
    rates = [2 * size**3 / t for t in window_seconds(call, repeats, device)]
    return {"size": size, "best_tflops": round(max(rates) / 1e12, 3),
            "median_tflops": round(statistics.median(rates) / 1e12, 3)}


def build(spec: dict, compile_model: bool, mode: str | None, device: str) -> torch.nn.Module:
    model = C.build_ours(spec).to(device)
    return torch.compile(model, mode=mode) if compile_model else model


def time_steps(step: Callable[[], None], warmup: int, steps: int, batch: int, device: str) -> dict[str, Any]:
    for _ in range(warmup):  # compilation happens here
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    times = window_seconds(step, steps, device)
    total = sum(times)
    return {"images_per_s": round(batch * steps / total, 2), "step_seconds_median": round(statistics.median(times), 5),
            "step_seconds": [round(t, 5) for t in times]}


def mfus(images_per_s: float, flops_per_image: float, peaks: dict[str, Optional[float]]) -> dict[str, Optional[float]]:
    """MFU against each peak (TFLOP/s); None where the peak is unknown."""
    achieved = images_per_s * flops_per_image
    return {f"mfu_{name}": (round(achieved / (peak * 1e12), 4) if peak else None) for name, peak in peaks.items()}


def measure_model(name: str, spec: dict, args: Any, device: str, peaks: dict[str, Optional[float]]) -> dict[str, Any]:
    flops = C.model_flops(spec, train=True)
    executed = flops["cls_only"] if args.cls_only else flops["architecture"]
    forward_flops = flops["architecture"] / 3  # inference: the full pass
    result: dict[str, Any] = {"model": name, "spec": spec,
                              "flops_per_image": {"train": executed, "train_architecture": flops["architecture"],
                                                  "infer": forward_flops}}
    C.log(f"[gpu] {name}: training ...")
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    images, labels = C.synthetic_batch(spec, args.batch, device=device)
    model = build(spec, args.compile, args.mode, device)
    step = C.train_step(model, images, labels, "bf16", device=device, fused=True, last_block_cls_only=args.cls_only)
    train = time_steps(step, args.warmup, args.steps, args.batch, device)
    train["tflops"] = round(train["images_per_s"] * executed / 1e12, 4)
    train.update(mfus(train["images_per_s"], executed, peaks))
    train["mfu_published_architecture"] = mfus(train["images_per_s"], flops["architecture"],
                                               {"published": peaks["published"]})["mfu_published"]
    if device == "cuda":
        train["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["train"] = train
    del model, step
    if device == "cuda":
        torch.cuda.empty_cache()

    C.log(f"[gpu] {name}: inference ...")
    images, _ = C.synthetic_batch(spec, args.infer_batch, device=device)
    model = build(spec, args.compile, args.mode, device)
    infer = time_steps(C.infer_step(model, images, "bf16", device=device), args.warmup, args.steps,
                       args.infer_batch, device)
    infer["tflops"] = round(infer["images_per_s"] * forward_flops / 1e12, 4)
    infer.update(mfus(infer["images_per_s"], forward_flops, peaks))
    result["infer"] = infer
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], "gpu.json")
    parser.add_argument("--models", default="vit_b16,vit_l16", help="comma-separated registry names")
    parser.add_argument("--batch", type=int, default=256, help="training batch")
    parser.add_argument("--infer-batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default, max-autotune, ...)")
    parser.add_argument("--cls-only", dest="cls_only", action="store_true",
                        help="train with the last block for the class token only (default: the full pass)")
    args = parser.parse_args(argv)
    payload: dict[str, Any] = {"script": "gpu", "quick": args.quick}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.quick:
        payload.update(skipped=True, reason="CUDA is not available on this machine",
                       machine={"torch": torch.__version__, "loadavg": os.getloadavg()})
        path = C.write_json(args.out, payload)
        print(f"skipped: CUDA is not available (wrote {path})")
        return 0
    C.apply_threads(args.threads)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (loss, optimizer) may use tensor cores
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # the patch-embedding conv
    if args.quick:
        specs = {"toy": C.vit_spec("vit_ti16", img_size=64, depth=2)}
        args.batch, args.infer_batch, args.steps, args.warmup, peak_size = 8, 8, 3, 2, (1024 if device == "cuda" else 256)
    else:
        specs = {name: C.vit_spec(name) for name in args.models.split(",") if name}
        peak_size = 8192
    payload["machine"] = C.machine_info()
    payload["bf16_inference"] = C.BF16_INFERENCE
    payload["device"] = device
    device_name = torch.cuda.get_device_name() if device == "cuda" else payload["machine"]["cpu"]
    published = published_peak(device_name) if device == "cuda" else None
    payload["config"] = {"models": list(specs), "batch": args.batch, "infer_batch": args.infer_batch,
                         "steps": args.steps, "warmup": args.warmup, "compile": args.compile, "mode": args.mode,
                         "last_block_cls_only": args.cls_only, "dtype": "bf16 autocast, fp32 weights",
                         "optimizer": "AdamW fused"}
    C.log("[gpu] bf16 matmul peak ...")
    measured = bf16_peak(peak_size, 5 if args.quick else 20, device)
    payload["peak"] = {"device_name": device_name, "published_bf16_dense_tflops": published and published[1],
                       "published_matched": published and published[0], "measured": measured}
    peaks = {"published": published and published[1], "measured": measured["best_tflops"]}
    payload["results"] = [measure_model(name, spec, args, device, peaks) for name, spec in specs.items()]
    path = C.write_json(args.out, payload)
    for r in payload["results"]:
        print(f"{r['model']}: train {r['train']['images_per_s']} img/s (MFU {_pct(r['train']['mfu_published'])} of the "
              f"published peak, {_pct(r['train']['mfu_measured'])} of the measured); inference "
              f"{r['infer']['images_per_s']} img/s (MFU {_pct(r['infer']['mfu_published'])})")
    print(f"peak: published {peaks['published']} TFLOP/s, measured {measured['best_tflops']} (wrote {path})")
    return 0


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
