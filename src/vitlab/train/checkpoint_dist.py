"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP): every rank writes its own shards.

With ``distributed.sharded_checkpoints=true`` the weights and optimiser state are never gathered on one rank: each
process writes the pieces it holds (FSDP2 shards; the whole tensors for one process or DDP, deduplicated by DCP)
and DCP's metadata records which piece of which tensor every file holds. Loading asks DCP for the pieces the
*current* layout needs, so a run saved on N processes resumes on M (2 -> 1, 1 -> 2, 4 -> 8, ...), whatever the
strategy on either side.

Layout, under ``RUN/checkpoints/sharded/``::

    step-00000010/   __0_0.distcp, __1_0.distcp, .metadata   (DCP: model + optimiser)
                     state.safetensors                       (rank 0: step, RNG states, data position, ...)

``state.safetensors`` is written last (atomically), so a step directory without it is an interrupted save and is
skipped (with a warning); the two newest complete steps are kept. Bit-identity: the tensors read back are exactly
those saved, on any number of ranks (tested); the steps after a resume on another world size differ from the
uninterrupted run only by float summation order (another gradient all-reduce, another AdamW kernel: FSDP takes
torch's multi-tensor AdamW, one process the fused one) and by the dropout stream, which is reseeded per rank.
"""
from __future__ import annotations

import contextlib
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from vitlab.errors import CheckpointError
from vitlab.models.weights import atomic_write
from vitlab.train.distributed import DistEnv, barrier
from vitlab.train.statefile import load_state, save_state

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
KEEP = 2  # newest complete steps kept on disk
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's model and optimiser state, keyed by parameter names (DTensor shards under FSDP2).

    ``get_state_dict`` creates the optimiser's state first when it has none yet (a step with zero gradients and
    lr 0), so a fresh optimiser has the slots a checkpoint fills."""
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


class ShardedCheckpoints:
    """The ``checkpoints/sharded/`` folder of one run; every rank calls :meth:`save` and :meth:`load`."""

    def __init__(self, root: str | Path, env: DistEnv) -> None:
        self.root = Path(root)
        self.env = env

    def step_dir(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def steps(self) -> list[tuple[int, Path]]:
        """Step directories on disk, newest first (complete or not)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name))]
        return sorted(found, reverse=True)

    def exists(self) -> bool:
        return any((path / STATE_FILE).exists() for _, path in self.steps())

    # ---- writing ------------------------------------------------------------------------------------------
    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
        """Write step ``step``: every rank its shards, then rank 0 the small ``state`` (which completes it)."""
        target = self.step_dir(step)
        if self.env.is_main and target.exists():
            shutil.rmtree(target)  # an interrupted earlier save of the same step
        barrier(self.env)
        with _one_process_quiet(self.env):
            dcp.save(training_state(model, optimizer), checkpoint_id=str(target))
        barrier(self.env)
        if self.env.is_main:
            _write_state(target / STATE_FILE, dict(state, step=step))
            for _, old in self.steps()[KEEP:]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(self.env)
        return target

    # ---- reading ------------------------------------------------------------------------------------------
    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete step and its small state, or None; incomplete or unreadable steps are reported."""
        skipped = []
        for step, path in self.steps():
            try:
                state = _read_state(path / STATE_FILE)
                if not isinstance(state, dict) or state.get("step") != step or not (path / ".metadata").exists():
                    raise ValueError("not a complete vitlab sharded checkpoint")
            except FileNotFoundError:
                skipped.append(f"{path}: incomplete (no {STATE_FILE}: the save was interrupted)")
                continue
            except Exception as error:  # safetensors raises several types for truncated / garbled files
                skipped.append(f"{path}: unreadable ({type(error).__name__}: {error})")
                continue
            for reason in skipped:
                log.warning("checkpoint skipped: %s", reason)
            return path, state
        if skipped:
            raise CheckpointError(f"{self.root}: no usable sharded checkpoint ({'; '.join(skipped)})")
        return None

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Fill the (possibly sharded) model and optimiser from ``path``, whatever world size wrote it."""
        state = training_state(model, optimizer)
        try:
            with _one_process_quiet(self.env):
                dcp.load(state, checkpoint_id=str(path))
        except Exception as error:  # DCP raises CheckpointException / RuntimeError for missing or misfit tensors
            raise CheckpointError(f"{path}: does not fit this run's model or optimiser ({error})") from None
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])



# The small state is stored as train/checkpoint.py stores its own: tensors plus a JSON skeleton, no pickle.
def _write_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: save_state(state, tmp))


def _read_state(path: Path) -> dict[str, Any]:
    return load_state(path)


@contextlib.contextmanager
def _one_process_quiet(env: DistEnv) -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group: that is the intent here."""
    with warnings.catch_warnings():
        if not env.distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield
