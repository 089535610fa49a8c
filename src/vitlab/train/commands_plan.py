"""``vitlab plan --config PRESET [key=value ...] --gpus N --gpu-memory GB``: memory and time before launching.

Prints, per GPU, the parameters, gradients, optimiser state and activations of the configured model for DDP and
FSDP2, with and without activation checkpointing; the largest micro-batch that fits; the gradient accumulation
the recipe's global batch then needs; and the time per epoch at an assumed MFU (said in the output). Nothing is
run on a GPU: see :mod:`vitlab.train.plan` for the model and docs/scaling-out.md for worked plans.

``--measure B`` checks the memory model on this machine's CPU instead: one real fp32 training step at micro-batch
B in a fresh process (with and without checkpointing), its peak resident-memory growth against the model's.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys

from vitlab.config import load_config
from vitlab.errors import ConfigError
from vitlab.train import plan as P

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="PRESET_OR_FILE", help="a preset name or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs in all (processes of torchrun, all nodes)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, metavar="GB", help="memory per GPU in GiB")
    parser.add_argument("--reserve", type=float, default=2.0, metavar="GB",
                        help="GiB per GPU kept free for the CUDA context, NCCL and fragmentation")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of one GPU in TFLOP/s (989: H100 SXM; 312: A100)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (0-1)")
    parser.add_argument("--train-images", type=int, default=None, help="training-set size (known for i21k, jft, "
                        "imagenet presets)")
    parser.add_argument("--classes", type=int, default=None, help="labels (known for i21k, jft, imagenet presets)")
    parser.add_argument("--measure", type=int, default=None, metavar="B",
                        help="measure one fp32 step at micro-batch B on this CPU and compare with the model")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    images, classes = P.dataset_facts(args.config, cfg)
    classes = args.classes or classes or 1000
    images = args.train_images or images
    for name in ("gpus", "gpu_memory", "peak_tflops", "mfu"):
        P.check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.mfu > 1:
        raise ConfigError(f"--mfu={args.mfu}: expected a fraction in (0, 1]")
    if args.measure is not None:
        return _measure(args, cfg, classes)
    arch, rows = P.plan(cfg, gpus=args.gpus, gpu_memory_gib=args.gpu_memory, train_images=images or 0,
                        classes=classes, peak_tflops=args.peak_tflops, mfu=args.mfu, reserve_gib=args.reserve)
    if args.json:
        print(json.dumps({"architecture": arch.__dict__, "rows": [_row_dict(r) for r in rows]}, indent=2))
        return 0
    print(_header(args, cfg, arch, images, classes))
    print(_table(rows, images is not None))
    return 0


def _row_dict(row) -> dict:
    m = row.memory
    return {"strategy": row.strategy, "checkpointing": row.checkpointing, "micro_batch": row.micro_batch,
            "accumulation": row.accumulation, "epoch_hours": row.epoch_hours, "params_gib": m.params / 2**30,
            "gradients_gib": m.gradients / 2**30, "optimizer_gib": m.optimizer / 2**30,
            "activations_gib": m.activations / 2**30, "peak_gib": m.peak / 2**30}


def _header(args, cfg, arch, images, classes) -> str:
    lines = [
        f"{arch.name}: {arch.params / 1e6:.1f}M parameters, {arch.tokens} tokens x width {arch.width}, depth "
        f"{arch.depth}; {classes} classes; recipe batch {cfg.train.batch_size}, precision "
        f"{cfg.train.precision if cfg.train.precision != 'auto' else 'bf16 (auto on GPUs)'}",
        f"{args.gpus} GPU(s) of {args.gpu_memory:g} GiB ({args.reserve:g} GiB kept free); optimiser "
        f"{cfg.optim.name}; FSDP2 param_dtype {cfg.distributed.param_dtype}, reshard_after_forward "
        f"{cfg.distributed.reshard_after_forward}, cpu_offload {cfg.distributed.cpu_offload}",
        f"time: ASSUMED {args.mfu:.0%} MFU of {args.peak_tflops:g} TFLOP/s per GPU"
        + (f", {images:,} training images per epoch" if images else " (give --train-images for time per epoch)"),
        "memory per GPU in GiB at the largest micro-batch that fits (peak = params + optimiser + max(activations + "
        "backward working set, gradients)); an estimate, not a measurement",
    ]
    return "\n".join(lines)


def _table(rows, with_time: bool) -> str:
    head = ["strategy", "checkpointing", "params", "grads", "optimiser", "activations", "peak", "micro-batch",
            "accumulation", "h/epoch"]
    body = []
    for r in rows:
        m = r.memory
        fits = r.micro_batch > 0
        body.append([r.strategy, r.checkpointing, f"{m.params / 2**30:.2f}", f"{m.gradients / 2**30:.2f}",
                     f"{m.optimizer / 2**30:.2f}", f"{m.activations / 2**30:.2f}" if fits else "-",
                     f"{m.peak / 2**30:.2f}" if fits else "does not fit", str(r.micro_batch) if fits else "-",
                     str(r.accumulation) if fits else "-", f"{r.epoch_hours:.2f}" if with_time and fits else "-"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    return "\n".join(out)


def measure_in_subprocess(config: str, overrides: list[str], batch: int, classes: int,
                          checkpoint_every: list[int]) -> list[dict]:
    """Run :func:`vitlab.train.plan.measure_first_step` once per ``checkpoint_every`` value, in that order, in a
    fresh process (a clean heap; malloc returns large blocks to the system at once, so the resident size follows
    the live tensors). Several settings in one process measure less than fresh processes would (the heap keeps
    some of the earlier step's memory): give one for a figure to trust."""
    code = (
        "import json, sys, torch; torch.set_num_threads(1)\n"
        "from vitlab.config import load_config\n"
        "from vitlab.train.plan import measure_first_step\n"
        "cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))\n"
        "print(json.dumps([measure_first_step(cfg, int(sys.argv[3]), int(sys.argv[4]), every)\n"
        "                  for every in json.loads(sys.argv[5])]))\n"
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code, config, json.dumps(overrides), str(batch), str(classes),
                             json.dumps(checkpoint_every)], capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        raise ConfigError(f"--measure: the measuring process failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure(args, cfg, classes: int) -> int:
    arch = P.architecture(cfg, classes)
    rows = []
    for every in (1, 0):  # a fresh process each: a step leaves the heap in another state for the next
        measured = measure_in_subprocess(args.config, args.overrides, args.measure, classes, [every])[0]
        setup = P.Setup(strategy="ddp", gpus=1, precision="fp32", checkpoint_every=every, optimizer=cfg.optim.name,
                        momentum=cfg.optim.momentum > 0, explicit_attention=P.uses_explicit_attention(arch))
        predicted = P.memory(arch, setup, args.measure).first_step_growth
        rows.append((every, measured["growth_bytes"], predicted))
        print(f"{arch.name} batch {args.measure}, checkpointing {'every block' if every else 'off'}: measured "
              f"{measured['growth_bytes'] / 2**20:.0f} MiB, model {predicted / 2**20:.0f} MiB "
              f"({predicted / measured['growth_bytes'] - 1:+.1%})")
    saved = rows[1][1] - rows[0][1]
    print(f"checkpointing saved {saved / 2**20:.0f} MiB of {rows[1][1] / 2**20:.0f} MiB ({saved / rows[1][1]:.0%}) "
          "of the step's peak growth (fp32, CPU, one process; the machine may be shared)")
    return 0
