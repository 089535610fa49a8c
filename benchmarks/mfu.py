"""The machine's measured matmul peak (fp32, bf16) and our models' achieved FLOP/s as a fraction of it (MFU).

Peak: ``torch.mm`` on square matrices. Every operand layout (``A @ B``, ``A @ B.T``, ``A.T @ B``, ``A.T @ B.T``)
is tried at 512, then the best layout at 256, 1024 and 2048; the fastest GEMM found is timed again in every round,
and the best rate seen anywhere is the peak. Layouts and sizes matter for bf16 on CPUs without bf16 instructions:
PyTorch's reference kernel is up to 7x faster in one layout than another and loses two thirds of its speed
beyond ~1000 (no cache blocking). fp32 goes to MKL, which reaches its peak from ~512 up in any layout.

Model FLOPs are counted from the architecture (``vitlab.models.flops.count_model_macs`` on the meta device,
attention included, 2 FLOPs per MAC; training = 3x forward). Every round times the peak GEMM and then each model
side. Three MFUs per side:

* ``mfu_cpu``:    FLOPs per CPU-second of this process / the best peak by CPU time. With one thread this is the
                  efficiency of the code on the core it runs on, whatever else the machine is doing: the headline;
* ``paired_mfu``: per round, wall-clock FLOP/s / the peak GEMM's wall-clock FLOP/s seconds apart; median;
* ``mfu``:        median wall-clock FLOP/s / the best wall-clock peak (the most conservative; on a shared
                  machine it mostly measures how much of a core the process was given).

Sides: ``vitlab`` (exact GELU, the full forward pass ``model(x)``: every FLOP of the architecture) and, for
training, ``vitlab_cls_only`` (``model(x, last_block_cls_only=True)``, as the classification objective trains: the
last block for the class token only). The plain figures count the FLOPs a side executes (the honest use of the
hardware); ``*_architecture`` count the architecture's FLOPs (for ``vitlab_cls_only``, credit for work it skips;
the "model FLOPs" convention of MFU).

    python benchmarks/mfu.py            # ~2.5 min on a quiet 2-core machine
    python benchmarks/mfu.py --quick    # seconds: a smoke test

Writes ``benchmarks/results/mfu.json``. Targets (issue 7): ViT-B/16 inference >= 85% of the fp32 peak and >= 75%
of the bf16 peak.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

import _common as C  # noqa: E402
from throughput import CASES, QUICK_CASES, case_spec  # noqa: E402  (the same configurations and batches)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = ("nn", "nt", "tn", "tt")  # which operand is read transposed: A @ B, A @ B.T, A.T @ B, A.T @ B.T


def gemm_call(size: int, dtype: torch.dtype, layout: str) -> Callable[[], None]:
    """A ``size``-cubed product in the given layout (operands stored so that the transpose is a free view)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    left = a.t() if layout[0] == "t" else a
    right = b.t() if layout[1] == "t" else b
    out = torch.empty(size, size, dtype=dtype)
    return lambda: torch.mm(left, right, out=out)


def time_once(call: Callable[[], None]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def survey(dtype: str, layouts: tuple[str, ...], sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """GFLOP/s (wall and CPU time) of each layout x size: one warm-up and one timed call each."""
    rows = []
    for size in sizes:
        for layout in layouts:
            call = gemm_call(size, DTYPES[dtype], layout)
            call()
            wall, cpu = time_once(call)
            flop = 2 * size**3
            rows.append({"size": size, "layout": layout, "gflops": round(flop / wall / 1e9, 3),
                         "gflops_cpu": round(flop / max(cpu, 1e-9) / 1e9, 3)})
    return rows


def find_peak_gemm(dtype: str, quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Layouts at one size, then sizes for the best layout; the best (by CPU time) is the peak GEMM."""
    rows = survey(dtype, LAYOUTS, (128,) if quick else (512,))
    layout = max(rows, key=lambda r: r["gflops_cpu"])["layout"]
    rows += survey(dtype, (layout,), (256,) if quick else (256, 1024, 2048))
    return rows, max(rows, key=lambda r: r["gflops_cpu"])


def measure_case(case, spec: dict, batch: int, peak: dict[str, Any], args: Any) -> dict[str, Any]:
    train = case.task == "train"
    torch.manual_seed(0)
    images, labels = C.synthetic_batch(spec, batch)
    sides = {"vitlab": C.build_ours(spec)}
    if train and case.cls_only:
        sides["vitlab_cls_only"] = C.build_ours(spec)
    calls: dict[str, Callable[[], None]] = {"peak_gemm": gemm_call(peak["size"], DTYPES[case.dtype], peak["layout"])}
    for name, model in sides.items():
        calls[name] = (C.train_step(model, images, labels, case.dtype, last_block_cls_only=name == "vitlab_cls_only")
                       if train
                       else C.infer_step(model, images, case.dtype))
    if args.quick:
        timings = C.interleaved(calls, items=batch, warmup=1, min_rounds=1, max_rounds=1, budget_s=0)
    else:
        budget = case.budget_s if args.budget is None else args.budget
        timings = C.interleaved(calls, items=batch, warmup=1, min_rounds=case.min_rounds, budget_s=budget)
    flops = C.model_flops(spec, train=train)
    peak_flop = 2 * peak["size"] ** 3
    peak_wall = [peak_flop / t for t in timings["peak_gemm"].wall]  # FLOP/s of the peak GEMM, per round
    peak_cpu = [peak_flop / max(t, 1e-9) for t in timings["peak_gemm"].cpu]
    out: dict[str, Any] = {
        "case": case.name, "dtype": case.dtype, "batch": batch, "flops_per_image": flops,
        "peak_gemm_round_gflops": [round(p / 1e9, 3) for p in peak_wall],
        "peak_gemm_round_gflops_cpu": [round(p / 1e9, 3) for p in peak_cpu], "sides": {},
    }
    for name in sides:
        t = timings[name]
        side: dict[str, Any] = {"images_per_s": round(t.rate("wall"), 4), "images_per_cpu_s": round(t.rate("cpu"), 4),
                                "round_seconds": [round(s, 4) for s in t.wall],
                                "round_cpu_seconds": [round(s, 4) for s in t.cpu]}
        executed = flops["cls_only"] if name == "vitlab_cls_only" else flops["architecture"]
        for key, count in (("", executed), ("_architecture", flops["architecture"])):
            if key and name != "vitlab_cls_only":
                continue
            wall = [batch * count / s for s in t.wall]
            side[f"achieved_gflops{key}"] = round(statistics.median(wall) / 1e9, 3)
            side[f"achieved_gflops_cpu{key}"] = round(count * t.rate("cpu") / 1e9, 3)
            side[f"paired_mfu{key}"] = round(statistics.median(a / p for a, p in zip(wall, peak_wall)), 4)
        out["sides"][name] = side
    return out


def main(argv: list[str] | None = None) -> int:
    args = C.base_parser(__doc__.splitlines()[0], "mfu.json").parse_args(argv)
    C.apply_threads(args.threads)
    payload: dict[str, Any] = {"script": "mfu", "quick": args.quick, "machine": C.machine_info(),
                               "bf16_inference": C.BF16_INFERENCE}

    C.log("[mfu] surveying GEMM layouts and sizes ...")
    surveys, peaks = {}, {}
    for dtype in DTYPES:
        surveys[dtype], peaks[dtype] = find_peak_gemm(dtype, args.quick)
    payload["gemm_survey"] = surveys
    payload["peak_gemm"] = {dtype: {"size": p["size"], "layout": p["layout"]} for dtype, p in peaks.items()}

    cases = []
    only = args.only or (QUICK_CASES if args.quick else None)
    for case in CASES:
        if not C.selected(case.name, only):
            continue
        spec, batch, origin = case_spec(case, args.quick)
        C.log(f"[mfu] {case.name} (batch {batch}) ...")
        result = measure_case(case, spec, batch, peaks[case.dtype], args)
        result["spec_from"] = origin
        cases.append(result)

    # Peaks: the best GEMM seen anywhere in the run (survey and every round), by wall and by CPU time.
    best = {}
    for dtype in DTYPES:
        rounds = [c for c in cases if c["dtype"] == dtype]
        best[dtype] = {
            "gflops": max([r["gflops"] for r in surveys[dtype]] + [g for c in rounds for g in c["peak_gemm_round_gflops"]]),
            "gflops_cpu": max([r["gflops_cpu"] for r in surveys[dtype]]
                              + [g for c in rounds for g in c["peak_gemm_round_gflops_cpu"]]),
        }
    payload["peak_gflops"] = {dtype: b["gflops"] for dtype, b in best.items()}
    payload["peak_gflops_cpu"] = {dtype: b["gflops_cpu"] for dtype, b in best.items()}
    for result in cases:
        peak = best[result["dtype"]]
        for side in result["sides"].values():
            for key in ("", "_architecture"):
                if f"achieved_gflops{key}" in side:
                    side[f"mfu{key}"] = round(side[f"achieved_gflops{key}"] / peak["gflops"], 4)
                    side[f"mfu_cpu{key}"] = round(side[f"achieved_gflops_cpu{key}"] / peak["gflops_cpu"], 4)
    payload["cases"] = cases
    payload["machine"]["loadavg_end"] = os.getloadavg()
    path = C.write_json(args.out, payload)
    print(f"peak GFLOP/s (wall): {payload['peak_gflops']}; by CPU time: {payload['peak_gflops_cpu']}; "
          f"GEMMs: {payload['peak_gemm']}")
    for result in cases:
        sides = ", ".join(
            f"{name} {s['achieved_gflops_cpu']:.2f} GFLOP/cpu-s = MFU {100 * s['mfu_cpu']:.1f}% by CPU time "
            f"(wall {100 * s['mfu']:.1f}%, paired {100 * s['paired_mfu']:.1f}%)"
            for name, s in result["sides"].items()
        )
        print(f"{result['case']:<24} batch {result['batch']:>3}  {sides}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
