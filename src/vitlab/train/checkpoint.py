"""Checkpoints that survive being killed at any moment.

A checkpoint is a pair in ``RUN/checkpoints/``: ``last.safetensors`` (the model weights, written by
:func:`vitlab.save_model`, so it loads anywhere) and ``last.state.safetensors`` (everything else the exact resume
needs: optimiser, EMA, loss scaler, RNG states of every rank, data position, step, best score; tensors plus a JSON
skeleton, see :mod:`vitlab.train.statefile`, so reading a checkpoint from someone else never runs code). The state
records the SHA-256 of its weights file, so a pair that does not belong together, or a weights file that is
truncated or garbled, is recognised.

Writing never destroys the only good copy::

    1. write last.new.safetensors and last.new.state.safetensors completely (each temp file + fsync + rename)
    2. last.*      -> prev.*      (the previous checkpoint is kept until the new one is in place)
    3. last.*.new  -> last.*

A SIGKILL between any two of these leaves at least one complete pair among ``last``, ``prev`` and ``.new``.
:meth:`CheckpointDir.load_latest` takes the newest pair whose state and weights both read and match; it logs
every candidate it had to skip (corrupt, partial, mismatched), so a fallback to the previous checkpoint is
reported, never silent. Temp files that a kill during step 1 left behind (``.last.new.safetensors.*.tmp``)
are removed by the next save.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.models.weights import atomic_write, read_safetensors, save_model
from vitlab.train.statefile import load_state, save_state

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 1: a pickled last.state.pt (no longer read: unpickling runs code)
SLOTS = ("last", "prev")
LEGACY_STATE = "{slot}.state.pt"


@dataclass
class Loaded:
    """A checkpoint that read back completely."""

    weights_path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    skipped: list[str]  # "path: reason" for each newer candidate that was unusable


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointDir:
    """The ``checkpoints/`` folder of one run (rank 0 writes; every rank may read)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def weights(self, slot: str = "last") -> Path:
        return self.root / f"{slot}.safetensors"

    def state(self, slot: str = "last") -> Path:
        return self.root / f"{slot}.state.safetensors"

    @property
    def best(self) -> Path:
        return self.root / "best.safetensors"

    def exists(self) -> bool:
        slots = (*SLOTS, "last.new")
        return any(self.state(slot).exists() or (self.root / LEGACY_STATE.format(slot=slot)).exists()
                   for slot in slots)

    # ---- writing ------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, state: dict[str, Any]) -> Path:
        """Write a new ``last`` pair, keeping the old one as ``prev`` until the new one is complete."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temp_files()
        new_weights, new_state = self.weights("last.new"), self.state("last.new")
        save_model(model, new_weights)
        state = dict(state, version=STATE_VERSION, weights_sha256=sha256_file(new_weights))
        atomic_write(new_state, lambda tmp: save_state(state, tmp))
        if self.state("last").exists() and self.weights("last").exists():
            os.replace(self.state("last"), self.state("prev"))
            os.replace(self.weights("last"), self.weights("prev"))
        os.replace(new_weights, self.weights("last"))
        os.replace(new_state, self.state("last"))
        _fsync_dir(self.root)
        return self.weights("last")

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temp files of writes a kill interrupted (only rank 0 writes here, one save at a time)."""
        stale = [path for path in self.root.glob(".*.tmp") if path.is_file()]
        for path in stale:
            try:
                path.unlink()
            except OSError as error:
                log.warning("could not remove the stale temp file %s (%s)", path, error.strerror)
        if stale:
            log.info("removed %d temp file(s) an interrupted checkpoint write left in %s", len(stale), self.root)
        return stale

    def save_best(self, model: nn.Module) -> Path:
        save_model(model, self.best)
        return self.best

    # ---- reading ------------------------------------------------------------------------------------------
    def load_latest(self) -> Loaded | None:
        """The newest complete checkpoint, or None when there is none; unusable candidates are reported."""
        states: list[tuple[int, Path, dict[str, Any]]] = []
        skipped: list[str] = []
        for slot in ("last.new", "last", "prev"):
            path = self.state(slot)
            if not path.exists():
                continue
            try:
                state = load_state(path)
                if not isinstance(state, dict) or "step" not in state or "weights_sha256" not in state:
                    raise ValueError("not a vitlab training state")
            except Exception as error:  # safetensors raises several types for truncated / garbled files
                skipped.append(f"{path}: unreadable ({type(error).__name__}: {error})")
                continue
            states.append((int(state["step"]), path, state))
        weights_files = [self.weights(slot) for slot in ("last.new", "last", "prev") if self.weights(slot).exists()]
        digests: dict[Path, str] = {}
        for step, path, state in sorted(states, key=lambda item: -item[0]):
            match = None
            for candidate in weights_files:
                if candidate not in digests:
                    digests[candidate] = sha256_file(candidate)
                if digests[candidate] == state["weights_sha256"]:
                    match = candidate
                    break
            if match is None:
                skipped.append(f"{path} (step {step}): its weights file is missing or corrupt")
                continue
            try:
                weights, _ = read_safetensors(match)
            except CheckpointError as error:
                skipped.append(f"{match}: {error}")
                continue
            for reason in skipped:
                log.warning("checkpoint skipped: %s", reason)
            if skipped:
                log.warning("resuming from the previous good checkpoint %s (step %d)", match, step)
            return Loaded(match, weights, state, skipped)
        for reason in skipped:
            log.warning("checkpoint skipped: %s", reason)
        legacy = [self.root / LEGACY_STATE.format(slot=slot) for slot in SLOTS]
        if not states and any(path.exists() for path in legacy):
            raise CheckpointError(
                f"{self.root}: holds a pickled training state (*.state.pt) of an older vitlab, which is not loaded "
                "because unpickling can run code; start the run again in a new --out"
            )
        if skipped:
            raise CheckpointError(
                f"{self.root}: no usable checkpoint to resume from ({len(skipped)} candidate(s) corrupt or partial)"
            )
        return None


def _fsync_dir(path: Path) -> None:
    """Make the renames durable (a power cut after os.replace may otherwise lose them on some filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
