"""The one training loop, for pre-training and fine-tuning alike.

One optimiser step of the engine::

    for each of A micro-batches (A = batch_size / (micro_batch_size * world_size)):
        loss = objective(model, images, targets) / A      # under bf16 / fp16 autocast when asked
        backward (DDP all-reduces the gradients only on the last micro-batch)
    unscale (fp16), clip at the global norm, check that the loss is finite, optimiser step,
    EMA update, learning rate for the next step from the schedule

so the effective batch is the recipe's (4096 for pre-training, 512 for fine-tuning) on any hardware.

Around it: data streams that shard by rank, periodic logs / evaluations / checkpoints, a clean stop on
SIGINT / SIGTERM (checkpoint, then exit), a hard stop on a non-finite loss (the last good checkpoint stays),
and exact resume: weights, optimiser, EMA, loss scaler, every rank's RNG state and the data position are
restored, so a run killed at any moment and resumed ends bit-identical on CPU to one never interrupted.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from vitlab.config import RunConfig, load_config
from vitlab.errors import CheckpointError, ConfigError, ResumeMismatchError, VitlabError
from vitlab.progress import Progress, results_table
from vitlab.train import distributed as dist_utils
from vitlab.train.checkpoint import CheckpointDir
from vitlab.train.evaluation import accuracy, autocast, objective_accuracy, resolve_weights
from vitlab.train.objectives import Objective, build_objective, metric_name, named_metrics
from vitlab.train.optim import EMA, Schedule, build_optimizer, set_lr
from vitlab.train.rundir import RunDir
from vitlab.train.threads import pick_threads

log = logging.getLogger(__name__)

# Config keys that may differ between a run and its resumption (they do not change the computation).
RESUMABLE_CHANGES = {
    "train.num_threads", "train.log_every", "train.eval_every", "train.checkpoint_every", "data.num_workers",
    "data.eval_batch_size", "train.device", "distributed.backend", "distributed.timeout_minutes", "train.micro_batch_size",
}


class TrainingDiverged(VitlabError):
    """The loss (or gradient norm) became NaN or infinite; the run stopped without overwriting checkpoints."""


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None  # autocast dtype (None: full precision)
    scaler: bool  # loss scaling (fp16 only)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto`` is bf16 on GPUs that support it, fp16 with loss scaling on older GPUs, fp32 on CPU.

    bf16 on CPU is available on request (``train.precision=bf16``): it is faster only on CPUs with bf16
    instructions (AMX / AVX512-BF16), so it is not the CPU default.
    """
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; using fp16 with loss scaling instead")
        name = "fp16"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return Precision(name, dtype, scaler=name == "fp16")


@dataclass
class DataPlan:
    """What the run resolved from the data: streams, sizes, classes."""

    train_stream: Any
    dev_stream: Any | None
    test_stream: Any | None
    num_classes: int
    in_chans: int
    img_size: int
    train_size: int
    bad_files: list[tuple[str, str]] = field(default_factory=list)


class StopRequest:
    """SIGINT / SIGTERM set a flag; the loop checkpoints at the next step boundary and exits cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the end of this step, then stopping",
                    signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """One training run in one run directory. ``Trainer(cfg, out).run()`` returns the summary dict."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        objective: Objective | None = None,
        evaluate_test: bool = True,
        label: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        self.evaluate_test = evaluate_test
        self.label = label or cfg.task
        self.env = dist_utils.setup(cfg.distributed, cfg.train.device)
        self.run_dir = RunDir(out_dir, writer=self.env.is_main)
        self.ckpt = CheckpointDir(self.run_dir.checkpoints)
        self.objective = objective or build_objective(cfg.train.loss, cfg.train.label_smoothing,
                                                      cfg.train.objective)
        self.precision = resolve_precision(cfg.train.precision, self.env.device)
        self.micro = cfg.micro_batch_size(self.env.world_size)
        self.accum = cfg.accumulation_steps(self.env.world_size)

    # ---- set-up ---------------------------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        has_checkpoint = self.ckpt.exists()
        if has_checkpoint and not self.resume:
            raise ConfigError(
                f"--out {self.run_dir.root} already holds a run; pass --resume to continue it or choose another --out"
            )
        if self.resume and self.run_dir.config.exists():
            saved = load_config(self.run_dir.config)
            changed = _differences(saved.to_dict(), self.cfg.to_dict())
            blocking = [key for key in changed if key not in RESUMABLE_CHANGES]
            if blocking:
                raise ResumeMismatchError(
                    f"--resume: the config differs from {self.run_dir.config} in {', '.join(blocking)}; "
                    "resume with the same config (or omit --config to reuse the saved one)",
                    config_path=str(self.run_dir.config), keys=tuple(blocking),
                )

    def _build_data(self) -> DataPlan:
        from vitlab.data import build_stream, get_source

        cfg, data = self.cfg, self.cfg.data
        source = get_source(data.dataset, split=data.train_split, **data.options)
        num_classes = int(source.num_classes)
        in_chans = data.in_chans or self._init_in_chans() or int(source.channels)
        img_size = data.img_size or self._model_default_img_size()
        streaming = bool(getattr(source, "streaming", False))
        dev_stream, indices = None, None
        if streaming:  # remote / streamed shards: no random access, so no index-based subsets
            if data.exclusions or data.dev_fraction:
                raise ConfigError("data.exclusions and data.dev_fraction need an indexed source; "
                                  "streamed shards have no random access (set data.options.streaming=false)")
            try:
                train_size = len(source)
            except TypeError:
                raise ConfigError("a streamed shard source needs data.options.num_samples=N "
                                  "(the number of training images) for epochs and logging") from None
        else:
            indices = np.arange(len(source), dtype=np.int64)
            if data.exclusions:
                from vitlab.data.dedup import load_exclusions

                excluded = np.fromiter(load_exclusions(data.exclusions), dtype=np.int64)
                indices = np.setdiff1d(indices, excluded)
                log.info("excluding %d near-duplicate images listed in %s", len(source) - len(indices),
                         data.exclusions)
            if data.dev_fraction:
                from vitlab.data.splits import dev_split

                train_idx, dev_idx = dev_split(source, data.dev_fraction, cfg.seed)
                indices = np.intersect1d(indices, np.asarray(train_idx, dtype=np.int64))
                dev_stream = build_stream(source, batch_size=data.eval_batch_size, train=False,
                                          img_size=img_size, in_chans=in_chans,
                                          indices=np.asarray(dev_idx, dtype=np.int64), device=str(self.env.device))
            train_size = len(indices)
            if train_size == len(source):
                indices = None  # the whole split
        if train_size < cfg.train.batch_size:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} is larger than the {train_size} training images of "
                f"{data.dataset}"
            )
        train_stream = build_stream(
            source, batch_size=self.micro, train=True, img_size=img_size, in_chans=in_chans,
            augment=data.augment, seed=cfg.seed, rank=self.env.rank, world_size=self.env.world_size,
            num_workers=data.num_workers, indices=indices, device=str(self.env.device),
        )
        test_stream = None
        if data.test_split and self.evaluate_test:
            test_source = get_source(data.dataset, split=data.test_split, **data.options)
            test_stream = build_stream(test_source, batch_size=data.eval_batch_size, train=False,
                                       img_size=img_size, in_chans=in_chans, device=str(self.env.device))
        bad = list(getattr(source, "bad_files", []) or [])
        return DataPlan(train_stream, dev_stream, test_stream, num_classes, in_chans, img_size, train_size, bad)

    def _init_in_chans(self) -> int | None:
        """The channels a pre-trained start expects (grey data is repeated to 3 channels for an RGB model)."""
        init_from = self.cfg.model.init_from
        if not init_from:
            return None
        if init_from.startswith("timm:") or init_from.endswith(".npz"):
            return 3
        from safetensors import safe_open

        try:
            with safe_open(str(resolve_weights(init_from)), framework="pt") as handle:
                fields = json.loads((handle.metadata() or {}).get("vitlab.config", "{}"))
        except Exception:  # unreadable here: load_pretrained reports it with the file name
            return None
        return fields.get("in_chans")

    def _model_default_img_size(self) -> int:
        from vitlab.models.registry import create_model

        if self.cfg.model.init_from and self.cfg.model.name is None:
            import vitlab

            with torch.device("meta"):
                model = vitlab.load_model(resolve_weights(self.cfg.model.init_from))
        else:
            with torch.device("meta"):
                model = create_model(self.cfg.model.name, **self.cfg.model.overrides)
        size = model.config.img_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def _build_model(self, plan: DataPlan) -> nn.Module:
        from vitlab.models.registry import create_model

        cfg = self.cfg.model
        if cfg.init_from:
            model = load_pretrained(cfg.init_from, name=cfg.name, num_classes=plan.num_classes,
                                    img_size=plan.img_size, overrides=cfg.overrides)
            in_chans = getattr(model.config, "in_chans", plan.in_chans)
            if in_chans != plan.in_chans:
                raise ConfigError(
                    f"model.init_from={cfg.init_from} takes {in_chans}-channel images but the data gives "
                    f"{plan.in_chans}; set data.in_chans={in_chans}"
                )
        else:
            overrides, num_classes = dict(cfg.overrides), plan.num_classes
            if self.cfg.train.objective == "mpp":
                from vitlab.train.mpp import mpp_num_classes

                if not overrides.get("mpp_classes"):
                    overrides["mpp_classes"] = mpp_num_classes(plan.in_chans)  # 512 for RGB, 8 for grey
                num_classes = 0  # no classifier to train: every parameter takes part (DDP needs that)
            model = create_model(cfg.name, num_classes=num_classes, img_size=plan.img_size,
                                 in_chans=plan.in_chans, **overrides)
        return model.to(self.env.device)

    def _total_steps(self, plan: DataPlan) -> int:
        t = self.cfg.train
        if t.steps is not None:
            return t.steps
        if t.epochs is not None:
            return max(1, math.ceil(t.epochs * plan.train_size / t.batch_size))
        raise ConfigError("give train.steps or train.epochs")

    # ---- the run --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        if cfg.model.name is None and not cfg.model.init_from:
            raise ConfigError("model.name is null and model.init_from is not set; set model.init_from=<weights> "
                              "to fine-tune, or model.name=<architecture> to train from scratch")
        if cfg.task == "finetune" and not cfg.model.init_from:
            log.warning("fine-tuning %s from random weights: model.init_from is not set", cfg.model.name)
        self._check_run_dir()
        self._started = time.perf_counter()  # wall time counts set-up and the final evaluation too
        self._wall_before = 0.0  # wall seconds of earlier sessions of this run (restored on resume)
        # A Python caller's process keeps its own thread count, RNG states and determinism setting.
        threads, rngs = torch.get_num_threads(), rng_state(env.device)
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            torch.set_num_threads(pick_threads(cfg.train.num_threads))
            return self._run()
        finally:
            torch.set_num_threads(threads)
            set_rng_state(rngs, env.device)
            torch.use_deterministic_algorithms(deterministic)

    def _run(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.seed)  # identical on every rank: same initial weights
        plan = self._build_data()
        total_steps = self._total_steps(plan)
        model = self._build_model(plan)
        ema = EMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        scaler = torch.amp.GradScaler(env.device.type, enabled=self.precision.scaler)
        schedule = Schedule.from_config(cfg.optim, total_steps)
        # Dropout / stochastic depth draw from a per-rank stream once the weights exist.
        seed_everything(cfg.seed * 7919 + 1 + env.rank)

        state = {"step": 0, "train_seconds": 0.0, "wall_seconds": 0.0, "best": None, "resumed_from": None}
        loaded = self.ckpt.load_latest() if self.resume else None
        if self.resume and loaded is None:
            log.info("--resume: no checkpoint in %s yet; starting from step 0", self.ckpt.root)
        if loaded is not None:
            if loaded.state.get("finished") and self.run_dir.summary.exists():
                log.info("%s already finished (step %d); nothing to resume", self.run_dir.root, loaded.state["step"])
                return json.loads(self.run_dir.summary.read_text())
            self._load_weights(loaded, model)
        # FSDP shards the parameters in place, so the optimiser is built on the wrapped model's parameters.
        self._cpu_copy = copy.deepcopy(model).cpu() if env.strategy == "fsdp" and env.distributed else None
        train_model = dist_utils.wrap(model, env)
        optimizer = build_optimizer(model, cfg.optim, fused=self._cpu_copy is None)
        if loaded is not None:
            state = self._restore(loaded, model, optimizer, ema, scaler, plan)
        self.run_dir.write_text("config.yaml", cfg.to_yaml())
        self.run_dir.write_bad_files(plan.bad_files)
        if loaded is not None:
            self.run_dir.truncate_metrics(state["step"])
        self.run_dir.open_tensorboard(purge_step=state["step"] + 1 if loaded is not None else None)

        eval_model = copy.deepcopy(model) if ema is not None else None
        progress = Progress(total_steps, desc=self.label, start=state["step"], log_every=cfg.train.log_every,
                            enabled=env.is_main)
        if env.is_main:
            n_params = sum(p.numel() for p in model.parameters())
            progress.message(
                f"{self.label}: {cfg.model.name or cfg.model.init_from} ({n_params / 1e6:.2f}M parameters) on "
                f"{cfg.data.dataset} ({plan.train_size} images, {plan.num_classes} classes, {plan.img_size} px), "
                f"{total_steps} steps of batch {cfg.train.batch_size} = {self.accum} x {self.micro} x "
                f"{env.world_size} process(es), {self.precision.name} on {env.device}"
                + (f", resuming at step {state['step']}" if loaded is not None else "")
            )
        try:
            with StopRequest() as stop:
                stopped = self._loop(train_model, model, optimizer, schedule, ema, scaler, plan, state,
                                     total_steps, progress, stop, eval_model)
            if stopped is not None:
                return {"interrupted": True, "signal": stopped, "step": state["step"]}
            if not state.get("finished"):
                self._save(model, optimizer, ema, scaler, plan, state, finished=True)
            return self._finish(model, ema, eval_model, plan, state, total_steps, progress)
        finally:
            progress.close()
            self.run_dir.close()

    def _loop(self, train_model, model, optimizer, schedule, ema, scaler, plan, state, total_steps, progress,
              stop, eval_model) -> int | None:
        # Closed on every way out (end, signal, divergence), so the stream's prefetch thread stops making batches
        # nobody will read while the run evaluates and saves (and exit has no batch in progress to wait for).
        batches = iter(plan.train_stream)
        try:
            return self._steps(train_model, model, optimizer, schedule, ema, scaler, plan, state, total_steps,
                               progress, stop, eval_model, batches)
        finally:
            batches.close()

    def _steps(self, train_model, model, optimizer, schedule, ema, scaler, plan, state, total_steps, progress,
               stop, eval_model, batches: Iterator) -> int | None:
        cfg, env = self.cfg, self.env
        window = {"loss": 0.0, "correct": 0.0, "count": 0.0, "steps": 0, "seconds": 0.0}
        train_model.train()
        while state["step"] < total_steps:
            step = state["step"]
            t0 = time.perf_counter()
            set_lr(optimizer, schedule(step))
            stats = self._train_step(train_model, optimizer, scaler, batches)  # [loss, correct, count]
            stats = dist_utils.all_reduce_sum(
                torch.cat([stats, torch.tensor([1.0 if stop.signum else 0.0], device=stats.device)]), env
            )
            loss = float(stats[0]) / env.world_size
            if not math.isfinite(loss):
                raise TrainingDiverged(self._diverged_message("loss", loss, step, schedule(step)))
            grad_norm = self._clip_and_step(train_model, optimizer, scaler)
            if grad_norm is not None and not math.isfinite(grad_norm) and not self.precision.scaler:
                raise TrainingDiverged(self._diverged_message("gradient norm", grad_norm, step, schedule(step)))
            if ema is not None:
                ema.update(model)
            state["step"] = step + 1
            elapsed = time.perf_counter() - t0
            state["train_seconds"] += elapsed
            window["loss"] += loss
            window["correct"] += float(stats[1])
            window["count"] += float(stats[2])
            window["steps"] += 1
            window["seconds"] += elapsed
            images_per_second = window["steps"] * cfg.train.batch_size / max(window["seconds"], 1e-9)
            progress.update(state["step"], loss=loss, lr=schedule(step), img_s=round(images_per_second))
            state["wall_seconds"] = self._wall()
            if state["step"] % cfg.train.log_every == 0 or state["step"] == total_steps:
                self.run_dir.log_metrics(named_metrics(cfg.train.objective, {
                    "step": state["step"],
                    "loss": window["loss"] / window["steps"],
                    "train_accuracy": window["correct"] / max(window["count"], 1.0),
                    "lr": schedule(step),
                    "grad_norm": grad_norm,
                    "images_per_second": images_per_second,
                    "epoch": state["step"] * cfg.train.batch_size / plan.train_size,
                    "wall_seconds": state["wall_seconds"],
                }))
                window = {"loss": 0.0, "correct": 0.0, "count": 0.0, "steps": 0, "seconds": 0.0}
            if cfg.train.eval_every and state["step"] % cfg.train.eval_every == 0 and state["step"] < total_steps:
                self._periodic_eval(model, ema, eval_model, plan, state, progress)
            stopping = float(stats[3]) > 0
            due = cfg.train.checkpoint_every and state["step"] % cfg.train.checkpoint_every == 0
            if (due or stopping) and state["step"] < total_steps:
                self._save(model, optimizer, ema, scaler, plan, state)
            if stopping:
                signum = stop.signum or signal.SIGTERM
                progress.message(
                    f"stopped at step {state['step']} ({signal.Signals(signum).name}); checkpoint saved in "
                    f"{self.ckpt.root}; continue with --resume"
                )
                return int(signum)
        return None

    def _wall(self) -> float:
        return self._wall_before + time.perf_counter() - self._started

    def _train_step(self, train_model, optimizer, scaler, batches: Iterator) -> torch.Tensor:
        """Forward and backward over the accumulation micro-batches; returns [mean loss, correct, count]."""
        device = self.env.device
        optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        for index in range(self.accum):
            images, targets = next(batches)
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with dist_utils.no_sync(train_model, skip=index < self.accum - 1):
                with autocast(device, self.precision.dtype):
                    loss, stats = self.objective(train_model, images, targets)
                scaler.scale(loss / self.accum).backward()
            totals[0] += loss.detach().double() / self.accum
            totals[1] += stats["correct"].double()
            totals[2] += stats["count"].double()
        return totals

    def _clip_and_step(self, train_model, optimizer, scaler) -> float | None:
        scaler.unscale_(optimizer)
        grad_norm = None
        clip = self.cfg.optim.clip_norm
        params = [p for p in train_model.parameters() if p.grad is not None]
        if clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip, foreach=True))
        scaler.step(optimizer)
        scaler.update()
        return grad_norm

    def _diverged_message(self, what: str, value: float, step: int, lr: float) -> str:
        last = self.ckpt.weights("last")
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written yet"
        return (
            f"{what} became {value} at step {step + 1} (lr {lr:.3g}); training stopped and {kept}. "
            "Try a lower optim.lr, more optim.warmup_steps, optim.clip_norm=1 or train.precision=fp32"
        )

    # ---- evaluation, checkpoints, resume --------------------------------------------------------------------
    def _evaluate(self, target: nn.Module, stream) -> dict[str, float]:
        """Accuracy and loss on an evaluation split: top-1 of the classifier, or, for masked patch prediction,
        of the corrupted patches' colour classes (with a fixed corruption seed, so steps compare alike)."""
        if self.cfg.train.objective == "classify":
            return accuracy(target, stream, self.env.device, self.precision.dtype)
        return objective_accuracy(self.objective, target, stream, self.env.device, self.precision.dtype,
                                  seed=self.cfg.seed)

    def _weights_for_eval(self, model, ema, eval_model) -> nn.Module:
        if ema is None:
            return model
        ema.copy_to(eval_model)
        return eval_model

    def _periodic_eval(self, model, ema, eval_model, plan, state, progress) -> None:
        target = self._weights_for_eval(model, ema, eval_model)
        split, stream = ("dev", plan.dev_stream) if plan.dev_stream is not None else ("test", plan.test_stream)
        if stream is None:
            return
        result = self._evaluate(target, stream)
        self.run_dir.log_metrics(named_metrics(self.cfg.train.objective, {
            "step": state["step"], f"{split}_accuracy": result["accuracy"], f"{split}_loss": result["loss"]}))
        name = metric_name(self.cfg.train.objective, f"{split}_accuracy").replace("_", " ")
        progress.message(f"step {state['step']}: {name} {result['accuracy']:.4f}")
        if split == "dev":
            self._maybe_best(target, result["accuracy"], state)

    def _maybe_best(self, target: nn.Module, dev_accuracy: float, state: dict) -> None:
        best = state.get("best")
        if best is None or dev_accuracy > best["dev_accuracy"]:
            state["best"] = {"step": state["step"], "dev_accuracy": dev_accuracy}
            self._save_best(target)

    def _save_best(self, target: nn.Module) -> None:
        weights = self._saveable(target)
        if self.env.is_main:
            self.ckpt.save_best(weights)

    def _saveable(self, model: nn.Module) -> nn.Module | None:
        """The model as a file sees it; under FSDP the shards are gathered (every rank must call this)."""
        if self._cpu_copy is None:
            return model
        full = dist_utils.full_model_state(model, self.env)
        if not self.env.is_main:
            return None
        self._cpu_copy.load_state_dict(full)
        return self._cpu_copy

    def _save(self, model, optimizer, ema, scaler, plan, state, finished: bool = False) -> None:
        rngs = dist_utils.gather_objects(rng_state(self.env.device), self.env)
        weights = self._saveable(model)
        optimizer_state = dist_utils.full_optimizer_state(model, optimizer, self.env)
        if self.env.is_main:
            payload = {
                "step": state["step"],
                "train_seconds": state["train_seconds"],
                "wall_seconds": state["wall_seconds"],
                "best": state["best"],
                "optimizer": optimizer_state,
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "data": plan.train_stream.state_dict(),
                "examples_per_batch": self.micro * self.env.world_size,
                "world_size": self.env.world_size,
                "finished": finished,
            }
            self.ckpt.save(weights, payload)
        dist_utils.barrier(self.env)

    def _load_weights(self, loaded, model) -> None:
        try:
            model.load_state_dict({k: v.to(self.env.device) for k, v in loaded.weights.items()})
        except RuntimeError as error:
            raise CheckpointError(f"{loaded.weights_path}: does not fit this run's model ({error})") from None

    def _restore(self, loaded, model, optimizer, ema, scaler, plan) -> dict[str, Any]:
        saved = loaded.state
        try:
            dist_utils.load_optimizer_state(model, optimizer, saved["optimizer"], self.env)
            if ema is not None:
                if saved.get("ema") is None:
                    raise CheckpointError(f"{loaded.weights_path}: the run had no EMA but the config asks for one")
                ema.load_state_dict(saved["ema"])
            scaler.load_state_dict(saved["scaler"])
        except (RuntimeError, KeyError, ValueError) as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"{loaded.weights_path}: does not fit this run's optimiser ({error})") from None
        data_state = dict(saved["data"])
        examples = saved.get("examples_per_batch", self.micro * self.env.world_size)
        now = self.micro * self.env.world_size
        if examples != now:  # another micro batch / world size: same examples, other batch numbering
            if (data_state["batch"] * examples) % now:
                raise CheckpointError(
                    f"cannot resume step {saved['step']} with {now} examples per micro-step (was {examples}): "
                    "the data position does not fall on a batch boundary"
                )
            data_state["batch"] = data_state["batch"] * examples // now
        plan.train_stream.load_state_dict(data_state)
        rngs = saved["rng"]
        if len(rngs) == self.env.world_size:
            set_rng_state(rngs[self.env.rank], self.env.device)
        else:
            log.warning("resuming on %d processes (was %d): dropout randomness is reseeded", self.env.world_size,
                        len(rngs))
            seed_everything(self.cfg.seed * 7919 + 1 + self.env.rank + 104729 * int(saved["step"]))
        self._wall_before = float(saved["wall_seconds"])
        self._started = time.perf_counter()
        log.info("resumed from %s at step %d", loaded.weights_path, saved["step"])
        return {
            "finished": bool(saved.get("finished")),
            "step": int(saved["step"]),
            "train_seconds": float(saved["train_seconds"]),
            "wall_seconds": float(saved["wall_seconds"]),
            "best": saved.get("best"),
            "resumed_from": int(saved["step"]),
        }

    def _finish(self, model, ema, eval_model, plan, state, total_steps, progress) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        metrics: dict[str, Any] = {}
        target = self._weights_for_eval(model, ema, eval_model)
        if plan.dev_stream is not None:
            dev = self._evaluate(target, plan.dev_stream)
            metrics.update(dev_accuracy=dev["accuracy"], dev_loss=dev["loss"])
            self.run_dir.log_metrics(named_metrics(cfg.train.objective, {
                "step": state["step"], "dev_accuracy": dev["accuracy"], "dev_loss": dev["loss"]}))
            self._maybe_best(target, dev["accuracy"], state)
        else:
            state["best"] = {"step": state["step"], "dev_accuracy": None}
            self._save_best(target)
        if plan.test_stream is not None:
            test = self._evaluate(target, plan.test_stream)
            metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
            self.run_dir.log_metrics(named_metrics(cfg.train.objective, {
                "step": state["step"], "test_accuracy": test["accuracy"], "test_loss": test["loss"]}))
        bad_files = list(getattr(plan.train_stream, "bad_files", None) or plan.bad_files)
        self.run_dir.write_bad_files(bad_files)  # file sources may find broken images only while training
        images = state["step"] * cfg.train.batch_size
        state["wall_seconds"] = self._wall()
        metrics = named_metrics(cfg.train.objective, metrics)
        summary = {
            "task": cfg.task,
            "objective": cfg.train.objective,
            "model": cfg.model.name or str(cfg.model.init_from),
            "dataset": cfg.data.dataset,
            "steps": state["step"],
            "wall_seconds": round(state["wall_seconds"], 2),
            "images_per_second": round(images / max(state["train_seconds"], 1e-9), 1),
            "metrics": metrics,
            "img_size": plan.img_size,
            "num_classes": plan.num_classes,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "batch_size": cfg.train.batch_size,
            "micro_batch_size": self.micro,
            "accumulation_steps": self.accum,
            "world_size": env.world_size,
            "precision": self.precision.name,
            "device": str(env.device),
            "num_threads": torch.get_num_threads(),  # what the thread rule chose (vitlab.train.threads)
            "train_images": plan.train_size,
            "best": state["best"],
            "weights": "checkpoints/best.safetensors",
            "init_from": cfg.model.init_from,
            "resumed_from": state.get("resumed_from"),
            "bad_files": len(bad_files),
        }
        self.run_dir.write_json("summary.json", summary)
        if env.is_main:
            rows = [("steps", state["step"]), ("wall time", f"{state['wall_seconds'] / 60:.1f} min"),
                    ("images/s", summary["images_per_second"])]
            rows += [(key.replace("_", " "), value) for key, value in metrics.items() if key.endswith("accuracy")]
            rows.append(("run directory", str(self.run_dir.root)))
            progress.message(results_table(rows, title=f"{self.label} results"))
        return summary


def load_pretrained(init_from: str, *, name: str | None, num_classes: int, img_size: int,
                    overrides: dict[str, Any]) -> nn.Module:
    """The fine-tuning start (Section 3.2): pre-trained backbone, no pre-logits, zero-init head, new resolution.

    ``init_from``: our ``.safetensors`` (or a run directory), an official ``.npz``, or ``timm:NAME[@FILE]`` for
    a timm model (``FILE``: local timm weights; otherwise timm's own cache / download).
    """
    from vitlab.models.weights import load_for_finetune

    if init_from.startswith("timm:"):
        path = _timm_to_safetensors(init_from[len("timm:"):])
        return load_for_finetune(path, num_classes=num_classes, img_size=img_size, **overrides)
    path = resolve_weights(init_from)
    return load_for_finetune(path, num_classes=num_classes, img_size=img_size, model=name if path.suffix == ".npz"
                             else None, **overrides)


def _timm_to_safetensors(spec: str) -> Path:
    """Convert a timm model's weights to our format in a temporary file (cached per process)."""
    import tempfile

    import timm

    import vitlab
    from vitlab.interop.timm import from_timm

    name, _, file = spec.partition("@")
    kwargs: dict[str, Any] = {"pretrained": True, "num_classes": 0}  # the head is replaced anyway
    if file:
        kwargs["pretrained_cfg_overlay"] = {"file": file}
    try:
        timm_model = timm.create_model(name, **kwargs)
    except Exception as error:  # timm raises RuntimeError / HF hub errors when weights cannot be found
        raise CheckpointError(f"model.init_from=timm:{spec}: timm could not load it ({error})") from None
    ours = from_timm(timm_model)
    path = Path(tempfile.mkdtemp(prefix="vitlab-timm-")) / f"{name}.safetensors"
    vitlab.save_model(ours, path)
    return path


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(left, dict) and isinstance(right, dict) and not dotted.endswith(("grid", "options")):
            keys += _differences(left, right, dotted + ".")
        elif left != right:
            keys.append(dotted)
    return keys


def run_training(cfg: RunConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                 objective: Objective | None = None, evaluate_test: bool = True,
                 label: str | None = None) -> dict[str, Any]:
    """Train one run; returns its summary (``{"interrupted": True, ...}`` when stopped by a signal)."""
    return Trainer(cfg, out_dir, resume=resume, objective=objective, evaluate_test=evaluate_test,
                   label=label).run()

