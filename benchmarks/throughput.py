"""Images/s of vitlab against timm (and Hugging Face for inference), same architecture, dtype and batch.

Every case builds the sides with the same weights, then times them interleaved in this one process (see
``_common.interleaved``) and reports medians and four ratios against timm: of medians, paired per round (with a
90% bootstrap interval), of CPU time and of the fastest rounds. Sides:

* ``vitlab``          our ViT with exact GELU (timm's numerics), full forward pass (``model(x)``): the same work
                      as timm, so its ratio is the like-for-like comparison and comes first. Training cases run
                      with the attention kernels the training engine's probe picks on this CPU (``attention``
                      in the JSON: ``explicit``, the default thresholds, or ``sdpa``);
* ``vitlab_cls_only`` the same as the classification objective trains it (training cases):
                      ``model(x, last_block_cls_only=True)``, the last block for the class token only (same logits
                      and gradients, fewer FLOPs than timm's pass);
* ``vitlab_tanh``    our default tanh GELU (with ``--tanh``): the official numerics, not like-for-like with timm;
* ``vitlab_sdpa``    ``vitlab`` with every attention through SDPA (with ``--sdpa``): what the explicit product of
                      short fp32 CPU sequences (``vitlab.models.kernels.attention``) saves;
* ``vitlab_explicit`` ``vitlab`` with the default thresholds whatever the probe picked (with ``--explicit``): what
                      the probe's choice of SDPA saves where it made one;
* ``timm``           timm's VisionTransformer (fused attention = SDPA);
* ``hf``             Hugging Face ViTForImageClassification with SDPA (inference cases).

Run from the repository root::

    python benchmarks/throughput.py                 # all cases: ~3.5 min on a quiet 2-core machine
    python benchmarks/throughput.py --budget 90     # longer, steadier
    python benchmarks/throughput.py --only vit_s16-train-fp32 --threads 1
    python benchmarks/throughput.py --quick         # seconds: a smoke test
    python benchmarks/throughput.py --only none --engine   # the training engine against a bare loop
    python benchmarks/throughput.py --only fmnist_tiny-train-fp32 --sdpa   # explicit attention against SDPA
    python benchmarks/throughput.py --only fmnist_tiny-train-fp32 --explicit   # the probe's choice against the default

``--engine`` adds one more comparison: ``vitlab.train.engine.run_training`` on the races' Fashion-MNIST tiny ViT
(synthetic 28x28 data through the real data stream, no test evaluation, no checkpoints) against a bare loop (the
same model, batch and fused AdamW on one fixed tensor), alternated twice; the gap is what the engine and its data
loader cost.

Writes ``benchmarks/results/throughput.json``.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

import _common as C  # noqa: E402
from vitlab.train.attention_probe import EXPLICIT, attention_kernels, choose_attention  # noqa: E402
from vitlab.train.probe import ProbeInput  # noqa: E402


@dataclass(frozen=True)
class Case:
    model: str  # fmnist_tiny | vit_s16 | vit_b16
    task: str  # train | infer
    dtype: str  # fp32 | bf16
    batch: int  # 0: the preset's batch
    budget_s: float  # timed seconds (at least min_rounds rounds run regardless)
    min_rounds: int = 3
    cls_only: bool = True  # also time vitlab_cls_only (training cases)
    native_batch: int = -1  # the batch on a CPU with native bf16 (-1: ``batch``), where bf16 is not the slow path

    @property
    def name(self) -> str:
        return f"{self.model}-{self.task}-{self.dtype}"


# The configurations. Batches are what fits the time budget on 2 CPU cores; bf16 without native
# support is 3-10x slower than fp32 here, hence its smaller batches there. On a CPU with native bf16 (AVX512-BF16,
# AMX) the bf16 cases take their fp32 twin's batch, so that bf16 against fp32 compares like with like. Both sides
# of a case always share the batch.
CASES = (
    Case("fmnist_tiny", "train", "fp32", batch=0, budget_s=20),
    Case("fmnist_tiny", "train", "bf16", batch=32, budget_s=15, native_batch=0),
    Case("vit_s16", "train", "fp32", batch=4, budget_s=20),
    Case("vit_s16", "train", "bf16", batch=1, budget_s=10, min_rounds=2, cls_only=False, native_batch=4),
    Case("vit_b16", "infer", "fp32", batch=4, budget_s=20),
    Case("vit_b16", "infer", "bf16", batch=1, budget_s=10, min_rounds=2, native_batch=4),
)

# --quick: the same code paths on toy sizes (a smoke test of the script, not a measurement): training with the
# bf16 kernels, inference with all three libraries.
QUICK_CASES = "fmnist_tiny-train-bf16,vit_b16-infer-fp32"
QUICK_SPEC = dict(img_size=32, patch_size=8, width=64, depth=2, mlp_dim=128, num_heads=2)


def case_spec(case: Case, quick: bool) -> tuple[dict, int, str]:
    from vitlab.models.kernels import cpu_has_native_bf16

    if case.native_batch >= 0 and cpu_has_native_bf16():
        case = replace(case, batch=case.native_batch)
    if case.model == "fmnist_tiny":
        spec, batch, origin = C.fmnist_tiny_spec()
    else:
        spec, batch, origin = C.vit_spec(case.model), case.batch, f"registry {case.model}"
    if quick:
        spec = dict(spec, **QUICK_SPEC)
        return spec, 2, origin + " (quick toy size)"
    return spec, case.batch or batch, origin


def sides(case: Case, spec: dict, tanh: bool, sdpa: bool, explicit: bool) -> dict[str, torch.nn.Module]:
    timm_model = C.build_timm(spec)
    models: dict[str, torch.nn.Module] = {"vitlab": C.build_ours(spec, like=timm_model)}
    if case.task == "train" and case.cls_only:
        models["vitlab_cls_only"] = C.build_ours(spec, like=timm_model)
    if tanh:
        models["vitlab_tanh"] = C.build_ours(spec, gelu="tanh", like=timm_model)
    if sdpa:
        models["vitlab_sdpa"] = C.build_ours(spec, like=timm_model)
    if explicit:
        models["vitlab_explicit"] = C.build_ours(spec, like=timm_model)
    models["timm"] = timm_model
    if case.task == "infer":
        models["hf"] = C.build_hf(spec)
    return models


def under_attention(choice: str, call: Callable[[], None]) -> Callable[[], None]:
    """``call`` with the attention kernels of ``choice`` (``explicit``: the default thresholds; ``sdpa``: every
    attention through SDPA) while it runs."""
    def run() -> None:
        with attention_kernels(choice):
            call()

    return run


def through_sdpa(call: Callable[[], None]) -> Callable[[], None]:
    """``call`` with every attention through SDPA (the ``vitlab_sdpa`` side)."""
    return under_attention("sdpa", call)


def engine_attention(case: Case, spec: dict, batch: int, model: torch.nn.Module) -> str:
    """The attention kernels vitlab's training engine would run this case with on this CPU (its probe's verdict,
    cached per machine and model: ``vitlab.train.attention_probe``); inference keeps the default thresholds."""
    if case.task != "train":
        return EXPLICIT
    size = spec["img_size"] if isinstance(spec["img_size"], int) else spec["img_size"][0]
    probe = ProbeInput(model, batch, spec["in_chans"], size, spec["num_classes"])
    return choose_attention(probe, torch.bfloat16 if case.dtype == "bf16" else None)


def run_case(case: Case, args: Any) -> dict[str, Any]:
    spec, batch, origin = case_spec(case, args.quick)
    torch.manual_seed(0)
    models = sides(case, spec, args.tanh, args.sdpa, args.explicit)
    images, labels = C.synthetic_batch(spec, batch)
    calls: dict[str, Callable[[], None]] = {
        name: (C.train_step(model, images, labels, case.dtype, last_block_cls_only=name == "vitlab_cls_only")
               if case.task == "train" else C.infer_step(model, images, case.dtype))
        for name, model in models.items()
    }
    attention = engine_attention(case, spec, batch, models["vitlab"])
    for name in ("vitlab", "vitlab_cls_only", "vitlab_tanh"):
        if name in calls:
            calls[name] = under_attention(attention, calls[name])
    if "vitlab_sdpa" in calls:
        calls["vitlab_sdpa"] = through_sdpa(calls["vitlab_sdpa"])
    if "vitlab_explicit" in calls:
        calls["vitlab_explicit"] = under_attention(EXPLICIT, calls["vitlab_explicit"])
    load_before = os.getloadavg()
    started = time.perf_counter()
    if args.quick:
        timings = C.interleaved(calls, items=batch, warmup=1, min_rounds=1, max_rounds=1, budget_s=0)
    else:
        budget = case.budget_s if args.budget is None else args.budget
        timings = C.interleaved(calls, items=batch, warmup=1, min_rounds=case.min_rounds, budget_s=budget)
    flops = C.model_flops(spec, train=case.task == "train")
    result = {
        "case": case.name, "model": case.model, "task": case.task, "dtype": case.dtype, "batch": batch,
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}, "spec_from": origin,
        "flops_per_image": flops, "attention": attention,
        "sides": {name: t.summary() for name, t in timings.items()},
        "ratio_vs_timm": C.ratios(timings, "timm"),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    for name, t in timings.items():  # achieved FLOP/s (architecture FLOPs; vitlab_cls_only executes fewer)
        result["sides"][name]["gflops_per_s"] = round(t.rate("wall") * flops["architecture"] / 1e9, 3)
    del models, calls
    gc.collect()
    return result


def engine_case(args: Any) -> dict[str, Any]:
    """Images/s of the training engine and of a bare loop on the same model and batch, alternated."""
    import tempfile

    import vitlab
    from vitlab.config import load_config
    from vitlab.train.engine import run_training

    steps = 3 if args.quick else 30
    threads = args.threads or torch.get_num_threads()
    plain = [f"model.{key}={value}" for key, value in C.FMNIST_TINY_OVERRIDES.items()]
    cfg = load_config("fmnist-vit-ti4", [  # the plain 28 px Fashion-MNIST recipe, with the races' tiny ViT
        "model.name=vit_ti7", "model.gelu=exact", *plain,
        f"train.batch_size={C.FMNIST_TINY_BATCH}", "data.dataset=synthetic", "data.options.num_samples=1024",
        "data.options.img_size=28", "data.options.channels=1", "data.test_split=null", f"train.steps={steps}",
        "train.log_every=10", "train.checkpoint_every=0", f"train.num_threads={threads}", "train.precision=fp32",
        "optim.warmup_steps=0",
    ])
    batch = cfg.train.batch_size
    images, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    engine_rates, bare_rates = [], []
    for _ in range(1 if args.quick else 2):
        with tempfile.TemporaryDirectory() as out:
            summary = run_training(cfg, out)
        engine_rates.append(float(summary["images_per_second"]))
        model = vitlab.create_model(cfg.model.name, num_classes=10, img_size=28, in_chans=1, **cfg.model.overrides)
        step = C.train_step(model, images, labels, "fp32")
        start = time.perf_counter()
        for _ in range(steps):
            step()
        bare_rates.append(steps * batch / (time.perf_counter() - start))
        torch.set_num_threads(threads)  # the engine applies its own setting
    return {"case": "engine-vs-bare-loop", "batch": batch, "steps": steps,
            "engine_images_per_s": [round(r, 2) for r in engine_rates],
            "bare_loop_images_per_s": [round(r, 2) for r in bare_rates],
            "engine_over_bare": round(sum(engine_rates) / sum(bare_rates), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], "throughput.json")
    parser.add_argument("--tanh", action="store_true", help="also time our default tanh-GELU model")
    parser.add_argument("--sdpa", action="store_true", help="also time our model with every attention through SDPA")
    parser.add_argument("--explicit", action="store_true",
                        help="also time our model with the default attention thresholds, whatever the probe picked")
    parser.add_argument("--engine", action="store_true", help="also time the training engine against a bare loop")
    args = parser.parse_args(argv)
    C.apply_threads(args.threads)
    payload: dict[str, Any] = {"script": "throughput", "quick": args.quick, "machine": C.machine_info(),
                               "bf16_inference": C.BF16_INFERENCE,
                               "timm_fused_attn": _timm_fused_attn(), "cases": []}
    only = args.only or (QUICK_CASES if args.quick else None)
    for case in CASES:
        if not C.selected(case.name, only):
            continue
        C.log(f"[throughput] {case.name} ...")
        result = run_case(case, args)
        payload["cases"].append(result)
        C.log(_line(result))
        C.write_json(args.out, payload)  # partial results survive an interrupted run
    if args.engine:
        C.log("[throughput] engine vs bare loop ...")
        try:
            payload["engine"] = engine_case(args)
        except Exception as error:  # noqa: BLE001 - the engine is another module's; keep the figures above
            payload["engine"] = {"error": f"{type(error).__name__}: {error}"}
        C.log(str(payload["engine"]))
    payload["machine"]["loadavg_end"] = os.getloadavg()
    path = C.write_json(args.out, payload)
    print("\n".join(_line(r) for r in payload["cases"]))
    if args.engine:
        print(payload["engine"])
    print(f"wrote {path}")
    return 0


def _line(result: dict) -> str:
    rates = ", ".join(f"{n} {s['images_per_s']:.2f}" for n, s in result["sides"].items())
    ratios = ", ".join(
        f"{n}/timm {r['median']:.3f} (paired {r['paired']:.3f} [{r['paired_90'][0]:.3f}-{r['paired_90'][1]:.3f}], "
        f"cpu {r['cpu']:.3f}, fastest {r['fastest']:.3f})"
        for n, r in result["ratio_vs_timm"].items())
    return f"{result['case']:<24} batch {result['batch']:>3}  img/s: {rates}  |  {ratios}"


def _timm_fused_attn() -> bool | None:
    try:
        from timm.layers import use_fused_attn

        return bool(use_fused_attn())
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
