"""Optimisers, learning-rate schedules and weight averaging for the paper's two recipes.

* Pre-training (Appendix B.1): Adam (beta1 0.9, beta2 0.999) with decoupled weight decay on weight matrices only.
* Fine-tuning (Appendix B.1.1): SGD with momentum 0.9, no weight decay.
* Schedules: linear warm-up, then linear decay to ``end_lr`` or cosine decay; or constant after warm-up.
* Polyak averaging (EMA) of the weights, used for the paper's Table 2 fine-tuning runs.

The schedule is a pure function of the optimiser step, so resuming needs no scheduler state beyond the step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import torch
from torch import nn

from vitlab.config import OptimSection


def decays(name: str, param: torch.Tensor, no_decay: set[str]) -> bool:
    """Weight decay only on weight matrices (kernels): not on biases, norms, position embeddings, class token."""
    return param.ndim >= 2 and name not in no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimiser groups: decayed weight matrices and everything else (decay 0)."""
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decayed, plain = [], []
    decayed_names, plain_names = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if decays(name, param, no_decay):
            decayed.append(param)
            decayed_names.append(name)
        else:
            plain.append(param)
            plain_names.append(name)
    return [
        {"params": decayed, "weight_decay": weight_decay, "names": decayed_names},
        {"params": plain, "weight_decay": 0.0, "names": plain_names},
    ]


def build_optimizer(model: nn.Module, cfg: OptimSection, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW (torch's decoupled decay: ``w -= lr_t * weight_decay * w``) or SGD with momentum.

    For SGD, torch's ``weight_decay`` is an L2 term added to the gradient (the fine-tuning recipe uses 0).
    ``fused`` uses torch's fused kernels (one pass over all parameters; several times faster than the
    per-tensor loop for small models on CPU); FSDP's sharded parameters take the multi-tensor path instead.
    """
    groups = param_groups(model, cfg.weight_decay)
    for group in groups:
        group.pop("names")
    speed = {"fused": True} if fused else {"foreach": True}
    if cfg.name == "adam":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **speed)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **speed)


@dataclass(frozen=True)
class Schedule:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then decay.

    Warm-up rises linearly to ``base_lr`` over ``warmup_steps`` (the first step already takes a non-zero
    step size); after warm-up, ``progress`` runs from 0 to 1 over the remaining steps and the rate goes to
    ``end_lr`` linearly or along half a cosine.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "linear"  # linear | cosine | constant
    end_lr: float = 0.0

    @classmethod
    def from_config(cls, cfg: OptimSection, total_steps: int) -> "Schedule":
        return cls(cfg.lr, total_steps, min(cfg.warmup_steps, total_steps), cfg.schedule, cfg.end_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        if self.kind == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0 - progress
        return self.end_lr + (self.base_lr - self.end_lr) * factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Polyak averaging: ``avg <- decay * avg + (1 - decay) * w`` after every optimiser step.

    The average is kept in float32 beside the model (its own copy of every parameter); buffers are copied
    as they are. Evaluation and ``best.safetensors`` use the average when it is on.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().clone().float() if value.is_floating_point() else value.detach().clone()
            for name, value in model.state_dict().items()
        }
        self._params = {name for name, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            if name in self._params and value.is_floating_point():
                self.shadow[name].mul_(self.decay).add_(value.detach().float(), alpha=1.0 - self.decay)
            else:
                self.shadow[name].copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (a separate evaluation copy)."""
        target = model.state_dict()
        for name, value in self.shadow.items():
            target[name].copy_(value.to(target[name].dtype))
