"""Periodic work around the training step: log (with the non-finite check), evaluate, checkpoint, stop.

The training step never reads a tensor to the host: on a GPU such a read waits for every kernel queued so far,
so the host cannot queue the next step while the device works. :class:`StepMeter` sums the loss, the accuracy
counts and the gradient norm on the device and remembers, also on the device, the first step whose loss or
gradient norm was not finite. It is read once per log step (``train.log_every``) and before every evaluation
and checkpoint. The trade-off: a NaN stops the run within ``log_every`` steps rather than at once; the weights
of those steps are never saved, so the last good checkpoint stays the last one written.

Under torchrun the read is also where the ranks agree (one all-reduce): the window's sums, whether any rank
diverged, and whether any rank received SIGINT / SIGTERM. A signal therefore stops a distributed run at the
next log step; one process stops at the end of the current step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vitlab.train import distributed as dist_utils
from vitlab.train.state import StopRequest

WHAT = ("loss", "gradient norm")


@dataclass
class Reading:
    """A log step's view of the window since the previous one (host numbers)."""

    loss: float  # mean per step, over ranks
    train_accuracy: float
    grad_norm: float  # of the last step
    steps: int
    seconds: float
    stop: bool  # some rank was asked to stop
    diverged: tuple[str, float, int] | None  # (what, value, 0-based step) of the first non-finite value


class StepMeter:
    """Device-side sums between log steps; :meth:`read` is the one device-to-host copy."""

    def __init__(self, device: torch.device, start_step: int, *, check_grad: bool) -> None:
        self.device = device
        self.check_grad = check_grad  # fp16 loss scaling skips non-finite gradients by design
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
        self._grad_norm = torch.zeros((), dtype=torch.float64, device=device)
        self._step = torch.tensor(float(start_step), dtype=torch.float64, device=device)  # steps done
        self._bad = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64, device=device)  # step, what, value
        self.steps = 0
        self.seconds = 0.0

    @torch.no_grad()
    def add(self, stats: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """One optimiser step's ``[mean loss, correct, count]`` and gradient norm (device tensors)."""
        self._sums += stats
        norm = grad_norm.detach().double()
        self._grad_norm = norm
        loss_bad = ~torch.isfinite(stats[0])
        bad = loss_bad | ~torch.isfinite(norm) if self.check_grad else loss_bad
        record = torch.stack([self._step, (~loss_bad).double(), torch.where(loss_bad, stats[0], norm)])
        self._bad = torch.where(bad & (self._bad[0] < 0), record, self._bad)
        self._step += 1
        self.steps += 1

    def read(self, env: dist_utils.DistEnv, stop: bool) -> Reading:
        """Copy the window to the host (all ranks call this at the same steps) and start a new window."""
        flags = torch.stack([(self._bad[0] >= 0).double(), torch.tensor(float(stop), device=self.device,
                                                                         dtype=torch.float64)])
        summed = dist_utils.all_reduce_sum(torch.cat([self._sums, flags]), env)
        loss, correct, count, any_bad, any_stop, grad_norm, bad_step, what, value = torch.cat(
            [summed, self._grad_norm[None], self._bad]).tolist()
        steps = max(self.steps, 1)
        reading = Reading(loss=loss / steps / env.world_size, train_accuracy=correct / max(count, 1.0),
                          grad_norm=grad_norm, steps=self.steps, seconds=self.seconds, stop=any_stop > 0,
                          diverged=None)
        if any_bad > 0:
            reading.diverged = (WHAT[int(what)], value, int(bad_step)) if bad_step >= 0 else ("loss", value, -1)
        self._sums.zero_()
        self.steps, self.seconds = 0, 0.0
        return reading

    def diverged(self, env: dist_utils.DistEnv) -> tuple[str, float, int] | None:
        """The first non-finite value so far, on any rank (read before evaluating or saving)."""
        flag = dist_utils.all_reduce_sum((self._bad[0] >= 0).double()[None], env)
        any_bad, bad_step, what, value = torch.cat([flag, self._bad]).tolist()
        if any_bad <= 0:
            return None
        return (WHAT[int(what)], value, int(bad_step)) if bad_step >= 0 else ("loss", value, -1)


class Every:
    """Run ``action(step)`` every ``every`` steps (0: never); at the final step only when ``final``."""

    def __init__(self, every: int, action: Callable[[int], None] | None = None, *, final: bool = False) -> None:
        self.every = every
        self.action = action
        self.final = final

    def due(self, step: int, total: int) -> bool:
        if step == total:
            return self.final
        return bool(self.every) and step % self.every == 0

    def __call__(self, step: int, total: int) -> bool:
        if self.due(step, total) and self.action is not None:
            self.action(step)
            return True
        return False


class StopHook:
    """Whether the run stops after this step: at once for one process; under torchrun at log steps, where the
    ranks agree (a rank that stopped alone would leave the others waiting in a collective)."""

    def __init__(self, request: StopRequest, distributed: bool) -> None:
        self.request = request
        self.distributed = distributed

    def __call__(self, reading: Reading | None) -> bool:
        if reading is not None:
            return reading.stop
        return self.request.signum is not None and not self.distributed
