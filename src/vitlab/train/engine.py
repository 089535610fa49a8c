"""The one training loop, for pre-training and fine-tuning alike.

One optimiser step of the engine::

    for each of A micro-batches (A = batch_size / (micro_batch_size * world_size)):
        loss = objective(model, images, targets) / A      # under bf16 / fp16 autocast when asked
        backward (DDP all-reduces the gradients only on the last micro-batch)
    unscale (fp16), gradient norm (clipped at optim.clip_norm when set), optimiser step,
    EMA update, learning rate for the next step from the schedule

so the effective batch is the recipe's (4096 for pre-training, 512 for fine-tuning) on any hardware. The step
reads nothing back to the host: loss, accuracy counts and gradient norm are summed on the device and read at
log steps (:mod:`vitlab.train.hooks`), where a non-finite loss or gradient norm stops the run.

Around it: data streams that shard by rank (:func:`vitlab.data.plan.plan_data`), periodic logs / evaluations /
checkpoints (:class:`vitlab.train.hooks.Every`), a clean stop on SIGINT / SIGTERM (checkpoint, then exit), a hard
stop on a non-finite loss or gradient norm (the last good checkpoint stays), and exact resume: weights,
optimiser, EMA, loss scaler, every rank's RNG state and the data position are restored, so a run killed at any
moment and resumed ends bit-identical on CPU to one never interrupted.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from vitlab.config import RunConfig
from vitlab.data.plan import DataPlan, plan_data, total_steps
from vitlab.errors import ConfigError, VitlabError
from vitlab.models.specs import run_label, spec_of_model
from vitlab.progress import Progress, results_table
from vitlab.train import distributed as dist_utils
from vitlab.train.checkpoint import CheckpointDir
from vitlab.train.checkpoint_dist import ShardedCheckpoints
from vitlab.train.evaluation import accuracy, autocast, objective_accuracy
from vitlab.train.hooks import Every, Reading, StepMeter, StopHook
from vitlab.train.model_init import build_model, default_img_size, init_in_chans
from vitlab.train.objectives import Objective, build_objective, metric_name, named_metrics
from vitlab.train.optim import EMA, Schedule, build_optimizer, set_lr
from vitlab.train.attention_probe import attention_kernels, choose_attention
from vitlab.train.precision import Precision, resolve_precision
from vitlab.train.probe import ProbeInput
from vitlab.train.resume import RunCheckpoints, check_run_dir
from vitlab.train.rundir import RunDir
from vitlab.train.state import StopRequest, TrainState, rng_state, seed_everything, set_rng_state
from vitlab.train.threads import pick_threads

log = logging.getLogger(__name__)


class TrainingDiverged(VitlabError):
    """The loss (or gradient norm) became NaN or infinite; the run stopped without overwriting checkpoints."""


@dataclass
class Parts:
    """Everything a run builds before its first step; the loop, the hooks and the checkpoints read it."""

    plan: DataPlan
    total_steps: int
    model: nn.Module  # the bare model (weights files, EMA source)
    train_model: nn.Module  # the model wrapped for DDP / FSDP (the one that trains)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    ema: EMA | None
    eval_model: nn.Module | None  # holds the EMA weights for evaluation
    state: TrainState
    meter: StepMeter
    progress: Progress


class Trainer:
    """One training run in one run directory. ``Trainer(cfg, out).run()`` returns the summary dict."""

    def __init__(self, cfg: RunConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                 objective: Objective | None = None, evaluate_test: bool = True, label: str | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.evaluate_test = evaluate_test
        self.label = label or cfg.task
        self.env = dist_utils.setup(cfg.distributed, cfg.train.device)
        self.run_dir = RunDir(out_dir, writer=self.env.is_main)
        self.ckpt = CheckpointDir(self.run_dir.checkpoints)
        self.objective = objective or build_objective(cfg.train.loss, cfg.train.label_smoothing,
                                                      cfg.train.objective)
        self.precision: Precision  # resolved once the model exists (precision=auto may time it)
        self.attention: str  # explicit | sdpa: measured once the model exists (vitlab.train.attention_probe)
        self.micro = cfg.micro_batch_size(self.env.world_size)
        self.accum = cfg.accumulation_steps(self.env.world_size)
        sharded = (ShardedCheckpoints(self.run_dir.checkpoints / "sharded", self.env)
                   if cfg.distributed.sharded_checkpoints else None)
        self.checkpoints = RunCheckpoints(self.ckpt, self.env, micro_batch_size=self.micro, seed=cfg.seed,
                                          sharded=sharded)
        self.started = time.perf_counter()  # wall time counts set-up and the final evaluation too
        self.wall_before = 0.0  # wall seconds of earlier sessions of this run (restored on resume)
        self.last_loss: float | None = None  # of the last log step, for the progress bar
        self.last_speed: int | None = None  # images/s over the last log window

    # ---- the run --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        if cfg.model.name is None and not cfg.model.init_from:
            raise ConfigError("model.name is null and model.init_from is not set; set model.init_from=<weights> "
                              "to fine-tune, or model.name=<architecture> to train from scratch")
        if cfg.task == "finetune" and not cfg.model.init_from:
            log.warning("fine-tuning %s from random weights: model.init_from is not set", cfg.model.name)
        check_run_dir(self.run_dir, self.checkpoints, cfg, self.resume)
        self.started = time.perf_counter()
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
        plan = plan_data(cfg.data, seed=cfg.seed, batch_size=cfg.train.batch_size, micro_batch_size=self.micro,
                         rank=env.rank, world_size=env.world_size, device=str(env.device),
                         evaluate_test=self.evaluate_test, in_chans=lambda: init_in_chans(cfg.model),
                         img_size=lambda: default_img_size(cfg.model))
        steps = total_steps(cfg.train.steps, cfg.train.epochs, train_size=plan.train_size,
                            batch_size=cfg.train.batch_size)
        model = build_model(cfg.model, objective=cfg.train.objective, num_classes=plan.num_classes,
                            in_chans=plan.in_chans, img_size=plan.img_size, classes=plan.classes,
                            source_channels=plan.source_channels).to(env.device)
        dist_utils.set_activation_checkpointing(model, cfg.train.activation_checkpointing)
        probe = ProbeInput(model, self.micro, plan.in_chans, plan.img_size, plan.num_classes)
        self.precision = resolve_precision(cfg.train.precision, env.device, probe)
        self.attention = choose_attention(probe, self.precision.dtype)
        ema = EMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        scaler = torch.amp.GradScaler(env.device.type, enabled=self.precision.scaler)
        seed_everything(cfg.seed * 7919 + 1 + env.rank)  # dropout / stochastic depth: a stream per rank

        loaded = self.checkpoints.latest() if self.resume else None
        if self.resume and loaded is None:
            log.info("--resume: no checkpoint in %s yet; starting from step 0", self.ckpt.root)
        if loaded is not None:
            if loaded.state.get("finished") and self.run_dir.summary.exists():
                log.info("%s already finished (step %d); nothing to resume", self.run_dir.root, loaded.state["step"])
                return json.loads(self.run_dir.summary.read_text())
            self.checkpoints.load_weights(loaded, model)
        # FSDP shards the parameters in place, so the optimiser is built on the wrapped model's parameters.
        self.checkpoints.keep_cpu_copy(model)
        train_model = dist_utils.wrap(model, env, cfg.distributed)
        optimizer = build_optimizer(model, cfg.optim, fused=self.checkpoints.cpu_copy is None)
        state = TrainState()
        if loaded is not None:
            state = self.checkpoints.restore(loaded, model, optimizer, ema, scaler, plan.train_stream)
            self.wall_before, self.started = state.wall_seconds, time.perf_counter()
        self.run_dir.write_text("config.yaml", cfg.to_yaml())
        self.run_dir.write_bad_files(plan.bad_files)
        if loaded is not None:
            self.run_dir.truncate_metrics(state.step)
        self.run_dir.open_tensorboard(purge_step=state.step + 1 if loaded is not None else None)
        p = Parts(plan, steps, model, train_model, optimizer, Schedule.from_config(cfg.optim, steps), scaler, ema,
                  copy.deepcopy(model) if ema is not None else None, state,
                  StepMeter(env.device, state.step, check_grad=not self.precision.scaler),
                  Progress(steps, desc=self.label, start=state.step, log_every=cfg.train.log_every,
                           enabled=env.is_main))
        self._announce(p, resuming=loaded is not None)
        try:
            with attention_kernels(self.attention):
                with StopRequest() as stop:
                    stopped = self._loop(p, stop)
                if stopped is not None:
                    return {"interrupted": True, "signal": stopped, "step": state.step}
                if not state.finished:
                    self._save(p, finished=True)
                return self._finish(p)
        finally:
            p.progress.close()
            self.run_dir.close()

    def _announce(self, p: Parts, resuming: bool) -> None:
        cfg, env, n_params = self.cfg, self.env, sum(t.numel() for t in p.model.parameters())
        name = run_label(cfg.model.name, spec_of_model(p.model), cfg.model.init_from)
        p.progress.message(  # rank 0 only (the progress display is off elsewhere)
            f"{self.label}: {name} ({n_params / 1e6:.2f}M parameters) on "
            f"{cfg.data.dataset} ({p.plan.train_size} images, {p.plan.num_classes} classes, {p.plan.img_size} px), "
            f"{p.total_steps} steps of batch {cfg.train.batch_size} = {self.accum} x {self.micro} x "
            f"{env.world_size} process(es), {self.precision.name} on {env.device}"
            + (f", resuming at step {p.state.step}" if resuming else ""))

    def _loop(self, p: Parts, stop: StopRequest) -> int | None:
        """Steps until the end or a stop request; returns the signal number when stopped by one."""
        t = self.cfg.train
        log_due = Every(t.log_every, final=True)  # the loop reads the meter at these steps (see _log)
        evaluate = Every(t.eval_every, lambda step: self._periodic_eval(p))
        checkpoint = Every(t.checkpoint_every, lambda step: self._save(p))
        stop_now = StopHook(stop, self.env.distributed)
        batches = iter(p.plan.train_stream)
        p.train_model.train()
        try:
            while p.state.step < p.total_steps:
                t0 = time.perf_counter()
                lr = p.schedule(p.state.step)
                set_lr(p.optimizer, lr)
                stats = self._train_step(p, batches)  # [mean loss, correct, count] on the device
                p.meter.add(stats, self._clip_and_step(p))
                if p.ema is not None:
                    p.ema.update(p.model)
                p.state.step += 1
                step, reading = p.state.step, None
                if log_due.due(step, p.total_steps):
                    reading = p.meter.read(self.env, stop=stop.signum is not None)  # the one host read
                elapsed = time.perf_counter() - t0
                p.state.train_seconds += elapsed
                p.state.wall_seconds = self._wall()
                if reading is None:
                    p.meter.seconds += elapsed
                else:
                    reading.seconds += elapsed
                    self._log(p, reading, lr)
                p.progress.update(step, loss=self.last_loss, lr=lr, img_s=self.last_speed)
                evaluate(step, p.total_steps)
                stopping = stop_now(reading)
                if stopping and not checkpoint.due(step, p.total_steps) and step < p.total_steps:
                    self._save(p)
                checkpoint(step, p.total_steps)
                if stopping:
                    signum = stop.signum or signal.SIGTERM
                    p.progress.message(f"stopped at step {step} ({signal.Signals(signum).name}); checkpoint saved "
                                       f"in {self.ckpt.root}; continue with --resume")
                    return int(signum)
        finally:
            getattr(batches, "close", lambda: None)()  # ends worker processes' iteration on every way out
        return None

    def _train_step(self, p: Parts, batches: Iterator) -> torch.Tensor:
        """Forward and backward over the accumulation micro-batches; returns [mean loss, correct, count]."""
        device = self.env.device
        p.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        for index in range(self.accum):
            images, targets = next(batches)
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with dist_utils.no_sync(p.train_model, skip=index < self.accum - 1):
                with autocast(device, self.precision.dtype):
                    loss, stats = self.objective(p.train_model, images, targets)
                p.scaler.scale(loss / self.accum).backward()
            totals += torch.stack([loss.detach().double() / self.accum, stats["correct"].double(),
                                   stats["count"].double()])
        return totals

    def _clip_and_step(self, p: Parts) -> torch.Tensor:
        """Unscale, take the global gradient norm (clipping it when asked), step; returns the norm (device)."""
        p.scaler.unscale_(p.optimizer)
        grads = [t for t in p.train_model.parameters() if t.grad is not None]
        clip = self.cfg.optim.clip_norm
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(grads, clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([t.grad for t in grads], foreach=True)
        p.scaler.step(p.optimizer)
        p.scaler.update()
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor

    def _log(self, p: Parts, reading: Reading, lr: float) -> None:
        if reading.diverged is not None:
            self._raise_diverged(p, reading.diverged)
        step, batch = p.state.step, self.cfg.train.batch_size
        self.last_loss = reading.loss
        self.last_speed = round(reading.steps * batch / max(reading.seconds, 1e-9))
        self.run_dir.log_metrics(named_metrics(self.cfg.train.objective, {
            "step": step,
            "loss": reading.loss,
            "train_accuracy": reading.train_accuracy,
            "lr": lr,
            "grad_norm": reading.grad_norm,
            "images_per_second": reading.steps * batch / max(reading.seconds, 1e-9),
            "epoch": step * batch / p.plan.train_size,
            "wall_seconds": p.state.wall_seconds,
        }))

    def _check_finite(self, p: Parts) -> None:
        """Nothing is evaluated or saved after a non-finite step (one host read, at those moments only)."""
        diverged = p.meter.diverged(self.env)
        if diverged is not None:
            self._raise_diverged(p, diverged)

    def _raise_diverged(self, p: Parts, diverged: tuple[str, float, int]) -> None:
        what, value, step = diverged
        last = self.ckpt.weights("last")
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written yet"
        where = f"at step {step + 1} (lr {p.schedule(step):.3g})" if step >= 0 else "on another process"
        raise TrainingDiverged(f"{what} became {value} {where}; training stopped and {kept}. Try a lower optim.lr, "
                               "more optim.warmup_steps, optim.clip_norm=1 or train.precision=fp32")

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def _save(self, p: Parts, finished: bool = False) -> None:
        self._check_finite(p)
        self.checkpoints.save(p.model, p.optimizer, p.ema, p.scaler, p.plan.train_stream, p.state, finished)

    # ---- evaluation --------------------------------------------------------------------
    def _evaluate(self, target: nn.Module, stream) -> dict[str, float]:
        """Accuracy and loss on an evaluation split: top-1 of the classifier, or, for masked patch prediction,
        of the corrupted patches' colour classes (with a fixed corruption seed, so steps compare alike)."""
        if self.cfg.train.objective == "classify":
            result = accuracy(target, stream, self.env.device, self.precision.dtype)
        else:
            result = objective_accuracy(self.objective, target, stream, self.env.device, self.precision.dtype,
                                        seed=self.cfg.seed)
        return {**result, "skipped": getattr(stream, "dropped", 0)}

    def _eval_target(self, p: Parts) -> nn.Module:
        if p.ema is None:
            return p.model
        p.ema.copy_to(p.eval_model)
        return p.eval_model

    def _periodic_eval(self, p: Parts) -> None:
        self._check_finite(p)
        split, stream = ("dev", p.plan.dev_stream) if p.plan.dev_stream is not None else ("test", p.plan.test_stream)
        if stream is None:
            return
        target = self._eval_target(p)
        result = self._evaluate(target, stream)
        self.run_dir.log_metrics(named_metrics(self.cfg.train.objective, _eval_row(p.state.step, split, result)))
        name = metric_name(self.cfg.train.objective, f"{split}_accuracy").replace("_", " ")
        p.progress.message(f"step {p.state.step}: {name} {result['accuracy']:.4f}")
        if split == "dev":
            self._maybe_best(p, target, result["accuracy"])

    def _maybe_best(self, p: Parts, target: nn.Module, dev_accuracy: float) -> None:
        best = p.state.best
        if best is None or dev_accuracy > best["dev_accuracy"]:
            p.state.best = {"step": p.state.step, "dev_accuracy": dev_accuracy}
            self.checkpoints.save_best(target)

    def _finish(self, p: Parts) -> dict[str, Any]:
        cfg, env, state = self.cfg, self.env, p.state
        metrics: dict[str, Any] = {}
        target = self._eval_target(p)
        if p.plan.dev_stream is not None:
            dev = self._evaluate(target, p.plan.dev_stream)
            metrics.update(_eval_metrics("dev", dev))
            self.run_dir.log_metrics(named_metrics(cfg.train.objective, _eval_row(state.step, "dev", dev)))
            self._maybe_best(p, target, dev["accuracy"])
        else:
            state.best = {"step": state.step, "dev_accuracy": None}
            self.checkpoints.save_best(target)
        if p.plan.test_stream is not None:
            test = self._evaluate(target, p.plan.test_stream)
            metrics.update(_eval_metrics("test", test))
            self.run_dir.log_metrics(named_metrics(cfg.train.objective, _eval_row(state.step, "test", test)))
        bad_files = list(getattr(p.plan.train_stream, "bad_files", None) or p.plan.bad_files)
        self.run_dir.write_bad_files(bad_files)  # file sources may find broken images only while training
        state.wall_seconds = self._wall()
        spec = spec_of_model(p.model)
        metrics = named_metrics(cfg.train.objective, metrics)
        summary = {
            "task": cfg.task,
            "objective": cfg.train.objective,
            "model": run_label(cfg.model.name, spec, cfg.model.init_from),
            "model_spec": spec.model_dump(mode="json"),  # the network that ran: family and every field
            "dataset": cfg.data.dataset,
            "steps": state.step,
            "wall_seconds": round(state.wall_seconds, 2),
            "images_per_second": round(state.step * cfg.train.batch_size / max(state.train_seconds, 1e-9), 1),
            "metrics": metrics,
            "img_size": p.plan.img_size,
            "num_classes": p.plan.num_classes,
            "num_parameters": sum(t.numel() for t in p.model.parameters()),
            "batch_size": cfg.train.batch_size,
            "micro_batch_size": self.micro,
            "accumulation_steps": self.accum,
            "world_size": env.world_size,
            "precision": self.precision.name,
            "attention": self.attention,  # explicit (the default thresholds) | sdpa (measured faster here)
            "device": str(env.device),
            "num_threads": torch.get_num_threads(),  # what the thread rule chose (vitlab.train.threads)
            "train_images": p.plan.train_size,
            "best": state.best,
            "weights": "checkpoints/best.safetensors",
            "init_from": cfg.model.init_from,
            "resumed_from": state.resumed_from,
            "bad_files": len(bad_files),
        }
        self.run_dir.write_json("summary.json", summary)
        if env.is_main:
            rows = [("steps", state.step), ("wall time", f"{state.wall_seconds / 60:.1f} min"),
                    ("images/s", summary["images_per_second"])]
            rows += [(key.replace("_", " "), value) for key, value in metrics.items() if key.endswith("accuracy")]
            rows.append(("run directory", str(self.run_dir.root)))
            p.progress.message(results_table(rows, title=f"{self.label} results"))
        return summary


def _eval_metrics(split: str, result: dict[str, Any]) -> dict[str, Any]:
    """``{split}_accuracy``, ``{split}_loss`` and, when unreadable images were left out, ``{split}_skipped_images``."""
    out = {f"{split}_accuracy": result["accuracy"], f"{split}_loss": result["loss"]}
    if result.get("skipped"):
        out[f"{split}_skipped_images"] = result["skipped"]
    return out


def _eval_row(step: int, split: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, **_eval_metrics(split, result)}


def run_training(cfg: RunConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                 objective: Objective | None = None, evaluate_test: bool = True,
                 label: str | None = None) -> dict[str, Any]:
    """Train one run; returns its summary (``{"interrupted": True, ...}`` when stopped by a signal)."""
    return Trainer(cfg, out_dir, resume=resume, objective=objective, evaluate_test=evaluate_test,
                   label=label).run()
