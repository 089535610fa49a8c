"""`vitlab demo`: the paper's story, small enough for a laptop CPU (``make demo``, <= 15 minutes on 2 cores).

The paper pre-trains a ViT on a large data set and transfers it to small ones, either by fine-tuning at a higher
resolution or with a few-shot linear probe on the frozen representation; Table 2 lists the transfer accuracies
next to the pre-training compute. The demo does the same at toy scale:

1. pre-train a small ViT on Fashion-MNIST (60,000 images, 28 px);
2. transfer to scikit-learn's digits (1,297 training images of 8 x 8 px, upsampled to 32 px: a higher
   resolution than pre-training, so the position embeddings are interpolated as in Section 3.2):

   a. fine-tune the pre-trained model (SGD, the paper's fine-tuning recipe, lr chosen on a dev split);
   b. train the same architecture from scratch with the same budget (steps, batch, resolution, data, dev split);
      it gets the optimiser that trains ViTs from scratch best (Adam with weight decay, as in pre-training),
      with its learning rate chosen on the same dev split, so the comparison does not favour pre-training;
   c. 5-shot linear evaluation (closed-form ridge, 3 seeds) of the pre-trained representation, and of the
      same architecture at random initialisation as the control;

3. print a table in the style of Table 2 (accuracy, compute in core-minutes = wall minutes x torch threads)
   and write ``DIR/demo-report.md``, ``DIR/summary.json`` and ``DIR/report.html`` (the page links every stage's
   own report; ``vitlab report DIR`` rebuilds it).

Every stage is a run directory under ``--out`` (``pretrain/``, ``finetune/``, ``scratch/``) or a JSON file
(``fewshot-*.json``); running the demo again with the same ``--out`` reuses what is finished and resumes
what is not. ``--size`` picks larger settings for a GPU.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vitlab
from vitlab.config import load_config
from vitlab.data import get_source
from vitlab.errors import ConfigError
from vitlab.evaluate.fewshot import fewshot_evaluate
from vitlab.report import build_report
from vitlab.train import finetune, pretrain
from vitlab.train.distributed import pick_device
from vitlab.weights import resolve

log = logging.getLogger(__name__)

FEWSHOT_SHOTS = (1, 5, 10, 25)
FEWSHOT_SEEDS = (0, 1, 2)
HEADLINE_SHOTS = 5  # the table's few-shot column, as in the paper's "5-shot" results


@dataclass(frozen=True)
class DemoSize:
    """One demo scale. Presets carry the recipes; these overrides only scale them (steps, sweep grids)."""

    pretrain: str  # a pre-training preset
    finetune: str  # a fine-tuning preset (digits, higher resolution)
    pretrain_overrides: tuple[str, ...] = ()
    finetune_overrides: tuple[str, ...] = ()
    finetune_grid: dict[str, list[Any]] = field(default_factory=dict)
    # From scratch: the fine-tuning preset's data, steps, batch and dev split, with the pre-training optimiser.
    scratch_overrides: tuple[str, ...] = ()
    scratch_grid: dict[str, list[Any]] = field(default_factory=dict)
    note: str = ""


SIZES: dict[str, DemoSize] = {
    # 2-core CPU, <= 15 minutes in all. Pre-training is the lion's share (see docs/demo.md for the timing).
    "cpu": DemoSize(
        pretrain="demo-cpu",
        finetune="demo-cpu-transfer",
        finetune_grid={"optim.lr": [0.03, 0.1]},
        scratch_overrides=("optim.name=adam", "optim.weight_decay=0.05"),
        scratch_grid={"optim.lr": [0.001, 0.003]},
        note="2-core CPU: 700 pre-training steps of batch 128; transfer runs of 150 steps of batch 64, "
             "lr from 2 values each",
    ),
    "gpu-small": DemoSize(
        pretrain="demo-gpu-small",
        finetune="digits-finetune",
        finetune_overrides=("train.steps=500", "optim.warmup_steps=50"),
        finetune_grid={"optim.lr": [0.003, 0.01, 0.03]},
        scratch_overrides=("optim.name=adam", "optim.weight_decay=0.05"),
        scratch_grid={"optim.lr": [0.0003, 0.001, 0.003]},
        note="one GPU: ViT-S/4 (12 layers, width 384), 10 epochs of Fashion-MNIST",
    ),
    "gpu-base": DemoSize(
        pretrain="demo-gpu-base",
        finetune="digits-finetune",
        finetune_overrides=("train.steps=500", "optim.warmup_steps=50"),
        finetune_grid={"optim.lr": [0.003, 0.01, 0.03]},
        scratch_overrides=("optim.name=adam", "optim.weight_decay=0.05"),
        scratch_grid={"optim.lr": [0.0001, 0.0003, 0.001]},
        note="one GPU: ViT-B/4 (12 layers, width 768), 20 epochs of Fashion-MNIST",
    ),
}


# ---- the stages ----------------------------------------------------------------------------------------------
def pretrain_config(size: DemoSize):
    return load_config(size.pretrain, list(size.pretrain_overrides))


def transfer_configs(size: DemoSize, pretrained: Path, pre_cfg) -> tuple[Any, Any]:
    """(fine-tuning config, from-scratch config): same data, resolution, steps and batch; different start."""
    finetune_cfg = load_config(size.finetune, list(size.finetune_overrides)
                               + [f"model.init_from={pretrained}", "model.name=null"])
    architecture = [f"model.name={pre_cfg.model.name}"]
    architecture += [f"model.{key}={json.dumps(value)}" for key, value in pre_cfg.model.overrides.items()]
    scratch_cfg = load_config(size.finetune, list(size.finetune_overrides) + ["model.init_from=null"] + architecture
                              + list(size.scratch_overrides))
    if pre_cfg.data.in_chans:
        scratch_cfg = scratch_cfg.override({"data.in_chans": pre_cfg.data.in_chans})
    return finetune_cfg, scratch_cfg


def _threads(cfg, summary: dict | None = None) -> int:
    """Threads the run used: its summary records what the thread rule chose; older summaries fall back."""
    if summary and summary.get("num_threads"):
        return int(summary["num_threads"])
    return int(getattr(cfg.train, "num_threads", None) or torch.get_num_threads())


@dataclass
class Row:
    """One column of the Table-2-style table (a way of transferring)."""

    label: str
    accuracy: float  # fraction on the digits test split
    spread: float | None = None  # std over seeds (few-shot)
    pretrain_minutes: float | None = None  # core-minutes (or GPU-minutes) of the pre-training it builds on
    transfer_minutes: float = 0.0
    detail: str = ""


def _compute_minutes(wall_seconds: float, threads: int, device: str) -> float:
    """Core-minutes on a CPU (wall minutes x torch threads); device-minutes on a GPU."""
    return wall_seconds / 60.0 * (1 if device.startswith("cuda") else threads)


def _fewshot(model_factory, out_file: Path, settings: dict[str, Any], img_size: int, in_chans: int,
             device: torch.device) -> dict[str, Any]:
    """Few-shot results on digits, cached in ``out_file`` with the settings that produced them."""
    if out_file.is_file():
        saved = json.loads(out_file.read_text())
        if saved.get("settings") == json.loads(json.dumps(settings)):
            return saved
    start = time.perf_counter()
    model = model_factory().to(device)
    report = fewshot_evaluate(model, get_source("digits", "train"), get_source("digits", "test"),
                              shots=FEWSHOT_SHOTS, seeds=FEWSHOT_SEEDS, img_size=img_size, in_chans=in_chans,
                              device=device, dataset="digits")
    result = {"settings": settings, "report": report.to_dict(), "wall_seconds": time.perf_counter() - start,
              "threads": torch.get_num_threads(), "table": report.table()}
    tmp = out_file.with_name(out_file.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out_file)
    return result


def _check_out(out: Path, size_name: str) -> None:
    """One --out holds one demo size: its run directories cannot be resumed with another size's configs."""
    marker = out / "demo.json"
    if marker.is_file():
        saved = json.loads(marker.read_text()).get("size")
        if saved != size_name:
            raise ConfigError(f"--out {out} holds a demo of --size {saved}; use another --out for --size {size_name}")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"size": size_name}) + "\n")


def run_demo(out_dir: str | os.PathLike, size_name: str = "cpu") -> dict[str, Any]:
    """Run (or resume) every stage of the demo; returns the rows of the table and the report's text."""
    if size_name not in SIZES:
        raise ConfigError(f"--size {size_name!r} is unknown; expected one of {', '.join(SIZES)}")
    size = SIZES[size_name]
    out = Path(out_dir)
    _check_out(out, size_name)
    start = time.perf_counter()

    pre_cfg = pretrain_config(size)
    log.info("[1/4] pre-training on Fashion-MNIST (%s) -> %s", size.pretrain, out / "pretrain")
    pre = pretrain(pre_cfg, out / "pretrain", resume=True)
    _stop_if_interrupted(pre)
    weights = resolve(out / "pretrain").path

    finetune_cfg, scratch_cfg = transfer_configs(size, weights, pre_cfg)
    log.info("[2/4] fine-tuning the pre-trained model on digits at %d px -> %s", finetune_cfg.data.img_size,
             out / "finetune")
    tuned = finetune(finetune_cfg, out / "finetune", resume=True, sweep=size.finetune_grid)
    _stop_if_interrupted(tuned)
    log.info("[3/4] training the same architecture from scratch on digits -> %s", out / "scratch")
    scratch = finetune(scratch_cfg, out / "scratch", resume=True, sweep=size.scratch_grid)
    _stop_if_interrupted(scratch)

    log.info("[4/4] %d-shot linear evaluation of the frozen representations", HEADLINE_SHOTS)
    device = pick_device(finetune_cfg.train.device)
    img_size = int(finetune_cfg.data.img_size)
    in_chans = int(pre_cfg.data.in_chans or vitlab.load_model(weights).config.in_chans)
    common = {"img_size": img_size, "shots": list(FEWSHOT_SHOTS), "seeds": list(FEWSHOT_SEEDS)}
    fs_pre = _fewshot(lambda: vitlab.load_model(weights, img_size=img_size), out / "fewshot-pretrained.json",
                      {**common, "weights": str(weights), "weights_mtime": os.path.getmtime(weights)},
                      img_size, in_chans, device)

    def random_init() -> torch.nn.Module:
        torch.manual_seed(pre_cfg.seed)
        return vitlab.create_model(pre_cfg.model.name, num_classes=0, img_size=img_size, in_chans=in_chans,
                                   **pre_cfg.model.overrides)

    fs_rand = _fewshot(random_init, out / "fewshot-random-init.json",
                       {**common, "model": pre_cfg.model.name, "overrides": pre_cfg.model.overrides,
                        "seed": pre_cfg.seed}, img_size, in_chans, device)

    dev = str(device)
    pre_minutes = _compute_minutes(pre["wall_seconds"], _threads(pre_cfg, pre), dev)
    rows = [
        Row("ViT pre-trained on Fashion-MNIST, fine-tuned", tuned["metrics"]["test_accuracy"],
            pretrain_minutes=pre_minutes,
            transfer_minutes=_compute_minutes(tuned["wall_seconds"], _threads(finetune_cfg, tuned), dev),
            detail=_sweep_detail(tuned)),
        Row("Same ViT trained from scratch", scratch["metrics"]["test_accuracy"],
            transfer_minutes=_compute_minutes(scratch["wall_seconds"], _threads(scratch_cfg, scratch), dev),
            detail=_sweep_detail(scratch)),
        _fewshot_row(f"{HEADLINE_SHOTS}-shot linear, pre-trained", fs_pre, pre_minutes, dev),
        _fewshot_row(f"{HEADLINE_SHOTS}-shot linear, random init", fs_rand, None, dev),
    ]
    unit = "GPU-min" if dev.startswith("cuda") else "core-min"
    table = table2(rows, unit, pre["metrics"].get("test_accuracy"))
    report = demo_report(size_name, size, rows, table, pre, tuned, scratch, fs_pre, fs_rand, pre_cfg,
                         finetune_cfg, scratch_cfg, time.perf_counter() - start)
    tmp = out / "demo-report.md.tmp"
    tmp.write_text(report)
    os.replace(tmp, out / "demo-report.md")
    _write_summary(out, size_name, rows, unit, pre, verdict(rows), time.perf_counter() - start)
    report_start = time.perf_counter()
    html = build_report(out)
    log.info("report: %s (%.1f s)", html, time.perf_counter() - report_start)
    return {"rows": [row.__dict__ for row in rows], "table": table, "report": report, "verdict": verdict(rows),
            "pretrained_beats_scratch": rows[0].accuracy > rows[1].accuracy}


def _write_summary(out: Path, size_name: str, rows: list[Row], unit: str, pre: dict[str, Any], text: str,
                   seconds: float) -> None:
    """``DIR/summary.json``: the headline numbers and the table's rows, what ``vitlab report DIR`` draws from."""
    summary = {
        "task": "demo",
        "size": size_name,
        "wall_seconds": round(seconds, 2),
        "unit": unit,
        "metrics": {
            "finetune_test_accuracy": rows[0].accuracy,
            "scratch_test_accuracy": rows[1].accuracy,
            f"fewshot_{HEADLINE_SHOTS}shot_pretrained_accuracy": rows[2].accuracy,
            f"fewshot_{HEADLINE_SHOTS}shot_random_init_accuracy": rows[3].accuracy,
            "pretrain_test_accuracy": pre["metrics"].get("test_accuracy"),
        },
        "verdict": text,
        "rows": [row.__dict__ for row in rows],
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")


def _stop_if_interrupted(summary: dict[str, Any]) -> None:
    if summary.get("interrupted"):
        raise KeyboardInterrupt  # the run saved a checkpoint; `vitlab demo` again resumes it


def _sweep_detail(summary: dict[str, Any]) -> str:
    sweep = summary.get("sweep")
    if not sweep:
        return ""
    trials = ", ".join(f"{t['values'].get('optim.lr')}: {100 * t['dev_accuracy']:.1f}%" for t in sweep["trials"])
    return f"lr {sweep['winner'].get('optim.lr')} chosen on a {100 * sweep['dev_fraction']:.0f}% dev split ({trials})"


def _fewshot_row(label: str, result: dict[str, Any], pretrain_minutes: float | None, device: str) -> Row:
    shot = next(r for r in result["report"]["results"] if r["shots"] == HEADLINE_SHOTS)
    return Row(label, shot["mean"], spread=shot["std"], pretrain_minutes=pretrain_minutes,
               transfer_minutes=_compute_minutes(result["wall_seconds"], result["threads"], device),
               detail=f"closed-form ridge, l2 2^10, mean ± std over {len(shot['accuracies'])} seeds")


# ---- the table -----------------------------------------------------------------------------------------------
def table2(rows: list[Row], unit: str, pretrain_accuracy: float | None) -> str:
    """Markdown in the layout of the paper's Table 2: one column per model / method, datasets then compute."""

    def accuracy(row: Row) -> str:
        return f"{100 * row.accuracy:.2f}" + (f" ± {100 * row.spread:.2f}" if row.spread is not None else "")

    def minutes(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    header = "| | " + " | ".join(row.label for row in rows) + " |"
    lines = [header, "|---|" + "---:|" * len(rows)]
    lines.append("| Digits, 32 px (test top-1 %) | " + " | ".join(accuracy(r) for r in rows) + " |")
    fmnist = f"{100 * pretrain_accuracy:.2f}" if pretrain_accuracy is not None else "-"
    lines.append("| Fashion-MNIST, 28 px (pre-training test top-1 %) | "
                 + " | ".join(fmnist if r.pretrain_minutes is not None else "-" for r in rows) + " |")
    lines.append(f"| Pre-training compute ({unit}) | " + " | ".join(minutes(r.pretrain_minutes) for r in rows) + " |")
    lines.append(f"| Transfer compute ({unit}) | " + " | ".join(minutes(r.transfer_minutes) for r in rows) + " |")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> str:
    gap = 100 * (rows[0].accuracy - rows[1].accuracy)
    if gap > 0:
        return (f"Pre-training helps: fine-tuning the pre-trained ViT beats the same ViT trained from scratch by "
                f"{gap:.2f} points on digits.")
    return f"Pre-training did NOT help here: fine-tuning is {-gap:.2f} points below training from scratch."


def demo_report(size_name, size, rows, table, pre, tuned, scratch, fs_pre, fs_rand, pre_cfg, finetune_cfg,
                scratch_cfg, seconds) -> str:
    model = pre_cfg.model
    arch = ", ".join(f"{k}={v}" for k, v in model.overrides.items())
    lines = [
        "# vitlab demo: pre-train on Fashion-MNIST, transfer to digits",
        "",
        f"Size `{size_name}` ({size.note}). Compute is wall minutes x torch threads "
        f"({torch.get_num_threads()} here) on a CPU, wall minutes on a GPU.",
        "",
        table,
        "",
        verdict(rows),
        "",
        "## What ran",
        "",
        f"- **Pre-training** (`{size.pretrain}`, run `pretrain/`): {model.name} ({arch}) on Fashion-MNIST at "
        f"{pre_cfg.data.img_size} px, {pre['steps']} steps of batch {pre_cfg.train.batch_size}, "
        f"{pre_cfg.optim.name} lr {pre_cfg.optim.lr}; {pre['wall_seconds'] / 60:.1f} wall minutes, "
        f"{pre['images_per_second']:.0f} images/s; test accuracy "
        f"{100 * pre['metrics'].get('test_accuracy', float('nan')):.2f}%.",
        f"- **Fine-tuning** (`{size.finetune}`, run `finetune/`): SGD momentum {finetune_cfg.optim.momentum}, "
        f"{finetune_cfg.train.steps} steps of batch {finetune_cfg.train.batch_size} at {finetune_cfg.data.img_size} "
        f"px, new zero-initialised head, position embeddings interpolated; {rows[0].detail}.",
        f"- **From scratch** (run `scratch/`): the same architecture, data, resolution, steps and batch, "
        f"{scratch_cfg.optim.name} with weight decay {scratch_cfg.optim.weight_decay}; {rows[1].detail}.",
        f"- **Few-shot linear** (`fewshot-*.json`): {rows[2].detail}; representation = pre-logits.",
        "",
        "## Few-shot linear accuracy on digits (all shot counts)",
        "",
        "Pre-trained:",
        "",
        fs_pre["table"],
        "",
        "Random initialisation (control):",
        "",
        fs_rand["table"],
        "",
        f"This invocation took {seconds / 60:.1f} wall minutes (finished stages are reused when the demo is re-run).",
        "",
    ]
    return "\n".join(lines)


# ---- the command ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="where the runs and the report go")
    parser.add_argument("--size", default="cpu", choices=tuple(SIZES),
                        help="cpu (default, <= 15 minutes on 2 cores) | gpu-small | gpu-base")


def run(args: argparse.Namespace) -> int:
    result = run_demo(args.out, args.size)
    print(result["table"])
    print()
    print(result["verdict"])
    print(f"report: {Path(args.out) / 'demo-report.md'}, {Path(args.out) / 'report.html'}")
    return 0
