"""What a training run carries from step to step and across a resume: :class:`TrainState`, the RNG states, and
the stop request that SIGINT / SIGTERM raise.

The engine owns one :class:`TrainState`; checkpoints store its fields (plus optimiser, EMA, scaler, RNG and data
position), and a resume rebuilds it from them, so a run killed at any moment continues where its last
checkpoint left it.
"""
from __future__ import annotations

import logging
import random
import signal
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The run's position: optimiser steps done, time spent, and the best dev result so far."""

    step: int = 0
    train_seconds: float = 0.0  # inside training steps (set-up, evaluation and checkpoints excluded)
    wall_seconds: float = 0.0  # everything, over every session of the run
    best: dict[str, Any] | None = None  # {"step", "dev_accuracy"} of best.safetensors
    resumed_from: int | None = None  # the step this session resumed at
    finished: bool = False  # the last checkpoint was written after the final step

    def checkpoint_fields(self) -> dict[str, Any]:
        """The fields a checkpoint stores (the rest belongs to one session)."""
        return {"step": self.step, "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds,
                "best": self.best}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> "TrainState":
        step = int(saved["step"])
        return cls(step=step, train_seconds=float(saved["train_seconds"]),
                   wall_seconds=float(saved["wall_seconds"]), best=saved.get("best"), resumed_from=step,
                   finished=bool(saved.get("finished")))


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
