"""Resume: what may change between a run and its resumption, and what a checkpoint saves and restores.

A resume must compute the same thing: every config key that changes the computation has to match the saved
``config.yaml``; the keys in :data:`RESUMABLE_CHANGES` (threads, logging and checkpoint intervals, workers,
device, micro batch) may differ. A different micro batch or world size renumbers the data position, which works
when the examples consumed so far fill whole micro-batches of the new size.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from vitlab.config import RunConfig, load_config
from vitlab.data.stream import Stream
from vitlab.errors import CheckpointError, ConfigError, ResumeMismatchError
from vitlab.train import distributed as dist_utils
from vitlab.train.checkpoint import CheckpointDir, Loaded
from vitlab.train.checkpoint_dist import ShardedCheckpoints
from vitlab.train.distributed import DistEnv
from vitlab.train.optim import EMA
from vitlab.train.rundir import RunDir
from vitlab.train.state import TrainState, rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

# Config keys that may differ between a run and its resumption (they do not change the computation).
RESUMABLE_CHANGES = {
    "train.num_threads", "train.log_every", "train.eval_every", "train.checkpoint_every", "data.num_workers",
    "data.eval_batch_size", "train.device", "distributed.backend", "distributed.timeout_minutes", "train.micro_batch_size",
    "train.activation_checkpointing", "distributed.reshard_after_forward", "distributed.cpu_offload",
}


def check_run_dir(run_dir: RunDir, checkpoints: "RunCheckpoints", cfg: RunConfig, resume: bool) -> None:
    """Refuse to overwrite a run silently, and to resume one with a config that computes something else."""
    if checkpoints.exists() and not resume:
        raise ConfigError(
            f"--out {run_dir.root} already holds a run; pass --resume to continue it or choose another --out"
        )
    if resume and run_dir.config.exists():
        saved = load_config(run_dir.config)
        blocking = [key for key in differences(saved.to_dict(), cfg.to_dict()) if key not in RESUMABLE_CHANGES]
        if blocking:
            raise ResumeMismatchError(
                f"--resume: the config differs from {run_dir.config} in {', '.join(blocking)}; "
                "resume with the same config (or omit --config to reuse the saved one)",
                config_path=str(run_dir.config), keys=tuple(blocking),
            )


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (option dicts and sweep grids compare as wholes)."""
    keys = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(left, dict) and isinstance(right, dict) and not dotted.endswith(("grid", "options")):
            keys += differences(left, right, dotted + ".")
        elif left != right:
            keys.append(dotted)
    return keys


def data_position(saved: dict, examples_now: int) -> dict:
    """The saved stream state, renumbered for ``examples_now`` examples per micro-step (all processes)."""
    state = dict(saved["data"])
    examples = saved.get("examples_per_batch", examples_now)
    if examples != examples_now:  # another micro batch / world size: same examples, other batch numbering
        if (state["batch"] * examples) % examples_now:
            raise CheckpointError(
                f"cannot resume step {saved['step']} with {examples_now} examples per micro-step (was {examples}): "
                "the data position does not fall on a batch boundary"
            )
        state["batch"] = state["batch"] * examples // examples_now
    return state


class RunCheckpoints:
    """Saves what an exact resume needs and restores it: weights, optimiser, EMA, loss scaler, every rank's RNG
    state, the data position and the :class:`TrainState`. Every rank calls :meth:`save` (FSDP gathers shards);
    rank 0 writes through :class:`vitlab.train.checkpoint.CheckpointDir`."""

    def __init__(self, ckpt: CheckpointDir, env: DistEnv, *, micro_batch_size: int, seed: int,
                 sharded: ShardedCheckpoints | None = None) -> None:
        self.ckpt = ckpt
        # distributed.sharded_checkpoints: weights and optimiser through torch.distributed.checkpoint, every rank
        # its own shards (no gather; resumable on another world size); the rest as always, from rank 0
        self.sharded = sharded
        self.env = env
        self.examples_per_batch = micro_batch_size * env.world_size
        self.seed = seed
        self.cpu_copy: nn.Module | None = None  # FSDP: a full copy on the CPU that rank 0 writes to files

    def exists(self) -> bool:
        return self.ckpt.exists() or (self.sharded is not None and self.sharded.exists())

    def latest(self) -> Loaded | None:
        """The checkpoint to resume from; a sharded one carries its step directory and small state only (its
        tensors are read into the wrapped model and optimiser by :meth:`restore`)."""
        if self.sharded is None:
            return self.ckpt.load_latest()
        found = self.sharded.latest()
        return None if found is None else Loaded(found[0], {}, found[1], [])

    def keep_cpu_copy(self, model: nn.Module) -> None:
        """Under FSDP the parameters get sharded in place: keep a full CPU copy to write files from."""
        if self.env.strategy == "fsdp" and self.env.distributed:
            self.cpu_copy = copy.deepcopy(model).cpu()

    def saveable(self, model: nn.Module) -> nn.Module | None:
        """The model as a file sees it; under FSDP the shards are gathered (every rank must call this)."""
        if self.cpu_copy is None:
            return model
        full = dist_utils.full_model_state(model, self.env)
        if not self.env.is_main:
            return None
        self.cpu_copy.load_state_dict(full)
        return self.cpu_copy

    def save_best(self, target: nn.Module) -> None:
        weights = self.saveable(target)
        if self.env.is_main:
            self.ckpt.save_best(weights)

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
             scaler: torch.amp.GradScaler, stream: Stream, state: TrainState, finished: bool = False) -> None:
        rngs = dist_utils.gather_objects(rng_state(self.env.device), self.env)
        # every rank's data position: a shard stream's readers differ by rank when shard counts do
        data = dist_utils.gather_objects(stream.state_dict(), self.env)
        sharded = self.sharded is not None
        weights = None if sharded else self.saveable(model)
        optimizer_state = None if sharded else dist_utils.full_optimizer_state(model, optimizer, self.env)
        if self.env.is_main or sharded:
            payload = {
                **state.checkpoint_fields(),
                "optimizer": optimizer_state,
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "data": data[0],
                "data_ranks": data,
                "examples_per_batch": self.examples_per_batch,
                "world_size": self.env.world_size,
                "finished": finished,
            }
            if sharded:  # every rank writes its shards, rank 0 the payload
                self.sharded.save(state.step, model, optimizer, payload)
            else:
                self.ckpt.save(weights, payload)
        dist_utils.barrier(self.env)

    def load_weights(self, loaded: Loaded, model: nn.Module) -> None:
        if self.sharded is not None:
            return  # read with the optimiser by restore(), once the model is wrapped
        try:
            model.load_state_dict({k: v.to(self.env.device) for k, v in loaded.weights.items()})
        except RuntimeError as error:
            raise CheckpointError(f"{loaded.weights_path}: does not fit this run's model ({error})") from None

    def restore(self, loaded: Loaded, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
                scaler: torch.amp.GradScaler, stream: Stream) -> TrainState:
        saved = loaded.state
        try:
            if self.sharded is not None:  # weights and optimiser from every rank's shards, any world size
                self.sharded.load(loaded.weights_path, model, optimizer)
            else:
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
        ranks = saved.get("data_ranks") or []
        mine = ranks[self.env.rank] if len(ranks) == self.env.world_size else saved["data"]
        stream.load_state_dict(data_position({**saved, "data": mine}, self.examples_per_batch))
        rngs = saved["rng"]
        if len(rngs) == self.env.world_size:
            set_rng_state(rngs[self.env.rank], self.env.device)
        else:
            log.warning("resuming on %d processes (was %d): dropout randomness is reseeded", self.env.world_size,
                        len(rngs))
            seed_everything(self.seed * 7919 + 1 + self.env.rank + 104729 * int(saved["step"]))
        log.info("resumed from %s at step %d", loaded.weights_path, saved["step"])
        return TrainState.from_checkpoint(saved)
