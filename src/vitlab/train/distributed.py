"""Running under torchrun: process group, device, model wrapping, and the few collectives the engine needs.

``torchrun --nproc-per-node N -m vitlab pretrain ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; we join
the process group (NCCL on GPUs, gloo on CPU), pin one GPU per process, and wrap the model in PyTorch's own
``DistributedDataParallel`` (or FSDP2's ``fully_shard``). Without those variables everything is a no-op and the
same code runs as one process. Only rank 0 writes files and shows progress.

The data is sharded by the stream itself (global batch ``perm[s*G:(s+1)*G]``, rank ``r`` takes slice ``r``), so
N processes with micro batch ``b`` see exactly the examples one process sees with micro batch ``N*b``.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from vitlab.config import DistributedSection
from vitlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # none | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` outside it)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is there, else the CPU."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={preference!r} but CUDA is not available; use train.device=cpu")
        if preference == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(preference)


def setup(cfg: DistributedSection, device_preference: str) -> DistEnv:
    """Join the torchrun process group when there is one; choose this process's device."""
    rank, world_size, local_rank = env_world()
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return DistEnv(device=device)
    if not dist.is_initialized():
        backend = cfg.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError("distributed.backend=nccl needs GPUs; use gloo for CPU training")
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=cfg.timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
    if rank != 0:
        logging.getLogger("vitlab").setLevel(logging.WARNING)  # rank 0 speaks for the run
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device, strategy=cfg.strategy)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def set_activation_checkpointing(model: nn.Module, setting: bool | int) -> None:
    """Apply ``train.activation_checkpointing`` to a model (its Transformer blocks; ViTs and hybrids)."""
    if setting is False or setting == 0:
        return
    if not hasattr(model, "set_activation_checkpointing"):
        raise ConfigError(f"train.activation_checkpointing={setting!r}: the {type(model).__name__} has no "
                          "Transformer blocks to checkpoint (ViTs and hybrids do)")
    model.set_activation_checkpointing(setting)


def fsdp_options(options: DistributedSection) -> dict[str, Any]:
    """``fully_shard`` keywords from the config: mixed precision, resharding after forward, CPU offload."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    return {
        "mp_policy": MixedPrecisionPolicy(param_dtype=DTYPES[options.param_dtype],
                                          reduce_dtype=DTYPES[options.reduce_dtype]),
        "reshard_after_forward": options.reshard_after_forward,
        "offload_policy": CPUOffloadPolicy() if options.cpu_offload else OffloadPolicy(),
    }


def wrap(model: nn.Module, env: DistEnv, options: DistributedSection | None = None) -> nn.Module:
    """The model as the training step calls it: DDP, FSDP2-sharded, or as is for one process.

    FSDP2 shards each Transformer block and then the rest of the model (patch embedding, norms, head) as the root
    group, so one block's parameters are gathered at a time (FSDP2 itself keeps the root group gathered after
    the forward pass: the backward pass needs it first).
    """
    if not env.distributed:
        return model
    if env.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        kwargs = fsdp_options(options or DistributedSection())
        for block in getattr(model, "blocks", []):
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Skip the gradient all-reduce for micro-batches before the last of an accumulation cycle."""
    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif skip and hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def _is_fsdp(env: DistEnv) -> bool:
    return env.distributed and env.strategy == "fsdp"


def full_model_state(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor]:
    """The unsharded weights on the CPU (FSDP gathers them: every rank must call this)."""
    if _is_fsdp(env):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {key: value.detach().cpu() for key, value in unwrap(model).state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv) -> dict:
    """The optimiser state as one process would hold it (FSDP: gathered; every rank must call this)."""
    if _is_fsdp(env):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, env: DistEnv) -> None:
    if _is_fsdp(env):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over processes (in place); the identity for one process."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, env: DistEnv) -> bool:
    """True when any process raises ``flag`` (how a signal on one rank stops all of them at the same step)."""
    if not env.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every process's ``obj`` in rank order (used to save each rank's RNG state in rank 0's checkpoint)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shutdown(clean: bool = True) -> None:
    """Leave the process group at the end of a command (no-op when there is none).

    After an error on this rank there is no barrier: the other ranks may never reach it.
    """
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
