"""ViT-B/16 at 224 on one CUDA GPU: bf16 training and inference images/s and MFU against the measured bf16 peak.

Training is the recipe a GPU user would run: fp32 master weights, bf16 autocast, attention through SDPA (flash
kernels), ``torch.compile`` of the model, fused AdamW, synthetic data already on the device (this measures the
model, not a loader). Inference is the compiled model under ``inference_mode`` with bf16 autocast. The peak is
the best of several large bf16 ``torch.mm`` (8192 cubed) timed with CUDA events. Issue 7's target: training
>= 50% MFU.

    python benchmarks/gpu.py                       # batch 256 training, 512 inference
    python benchmarks/gpu.py --batch 128 --no-compile
    python benchmarks/gpu.py --quick               # a small ViT, a few steps: a smoke test

Without CUDA it writes ``{"skipped": true, ...}`` and exits 0. Writes ``benchmarks/results/gpu.json``.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

import _common as C  # noqa: E402


def cuda_seconds(call: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds per call, each timed with CUDA events (no host sync inside the timed region)."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def bf16_peak(size: int, repeats: int) -> dict[str, Any]:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(size, size, device="cuda", dtype=torch.bfloat16)
    call = lambda: torch.mm(a, b, out=out)  # noqa: E731
    cuda_seconds(call, 3)  # warm-up: cuBLAS heuristics, clocks
    times = cuda_seconds(call, repeats)
    rates = [2 * size**3 / t for t in times]
    return {"size": size, "best_tflops": round(max(rates) / 1e12, 2),
            "median_tflops": round(statistics.median(rates) / 1e12, 2)}


def build(spec: dict, compile_model: bool, mode: str | None) -> torch.nn.Module:
    model = C.build_ours(spec).cuda()
    return torch.compile(model, mode=mode) if compile_model else model


def time_steps(step: Callable[[], None], warmup: int, steps: int, batch: int) -> dict[str, Any]:
    for _ in range(warmup):  # compilation happens here
        step()
    torch.cuda.synchronize()
    times = cuda_seconds(step, steps)
    per_step = statistics.median(times)
    return {"images_per_s": round(batch / per_step, 1), "step_seconds_median": round(per_step, 5),
            "step_seconds": [round(t, 5) for t in times]}


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], "gpu.json")
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--batch", type=int, default=256, help="training batch")
    parser.add_argument("--infer-batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default, max-autotune, ...)")
    parser.add_argument("--full-pass", dest="cls_only", action="store_false",
                        help="train with the full last block (default: class token only, as the objective trains)")
    args = parser.parse_args(argv)
    payload: dict[str, Any] = {"script": "gpu", "quick": args.quick}
    if not torch.cuda.is_available():
        payload.update(skipped=True, reason="CUDA is not available on this machine",
                       machine={"torch": torch.__version__, "loadavg": os.getloadavg()})
        path = C.write_json(args.out, payload)
        print(f"skipped: CUDA is not available (wrote {path})")
        return 0

    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (loss, optimizer) may use tensor cores
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # the patch-embedding conv
    if args.quick:
        spec = C.vit_spec("vit_ti16", img_size=64, depth=2)
        args.batch, args.infer_batch, args.steps, args.warmup, peak_size = 8, 8, 3, 2, 1024
    else:
        spec, peak_size = C.vit_spec(args.model), 8192
    payload["machine"] = C.machine_info()
    payload["config"] = {"model": args.model if not args.quick else "toy", "spec": spec, "batch": args.batch,
                         "infer_batch": args.infer_batch, "compile": args.compile, "mode": args.mode,
                         "last_block_cls_only": args.cls_only, "dtype": "bf16 autocast, fp32 weights", "optimizer": "AdamW fused"}
    C.log("[gpu] bf16 matmul peak ...")
    peak = bf16_peak(peak_size, 5 if args.quick else 20)
    payload["peak"] = peak
    peak_flops = peak["best_tflops"] * 1e12
    flops = C.model_flops(spec, train=True)
    # MFU counts the FLOPs a step executes (the class-token-only last block's skipped work is not credited);
    # ``mfu_architecture`` counts the architecture's, the convention of published MFU figures.
    executed = flops["cls_only"] if args.cls_only else flops["architecture"]
    forward_flops = flops["architecture"] / 3  # inference: the full pass

    C.log("[gpu] training ...")
    torch.manual_seed(0)
    images, labels = C.synthetic_batch(spec, args.batch, device="cuda")
    model = build(spec, args.compile, args.mode)
    step = C.train_step(model, images, labels, "bf16", device="cuda", fused=True, last_block_cls_only=args.cls_only)
    train = time_steps(step, args.warmup, args.steps, args.batch)
    train["tflops"] = round(train["images_per_s"] * executed / 1e12, 2)
    train["mfu"] = round(train["images_per_s"] * executed / peak_flops, 4)
    train["mfu_architecture"] = round(train["images_per_s"] * flops["architecture"] / peak_flops, 4)
    train["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    payload["train"] = train
    del model, step
    torch.cuda.empty_cache()

    C.log("[gpu] inference ...")
    images, _ = C.synthetic_batch(spec, args.infer_batch, device="cuda")
    model = build(spec, args.compile, args.mode)
    infer = time_steps(C.infer_step(model, images, "bf16", device="cuda"), args.warmup, args.steps, args.infer_batch)
    infer["tflops"] = round(infer["images_per_s"] * forward_flops / 1e12, 2)
    infer["mfu"] = round(infer["images_per_s"] * forward_flops / peak_flops, 4)
    payload["infer"] = infer
    payload["flops_per_image"] = {"train": executed, "infer": forward_flops, "train_architecture": flops["architecture"]}
    path = C.write_json(args.out, payload)
    print(f"bf16 peak {peak['best_tflops']} TFLOP/s; train {train['images_per_s']} img/s, MFU {100 * train['mfu']:.1f}%;"
          f" inference {infer['images_per_s']} img/s, MFU {100 * infer['mfu']:.1f}%  (wrote {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
