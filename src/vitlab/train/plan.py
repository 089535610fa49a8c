"""Before launching: does a configuration fit a GPU's memory, with which micro-batch, and how long will it take?

The memory model counts bytes per GPU for one training step of the engine (AdamW or SGD, the classification
objective with its class-token-only last block):

* **parameters, gradients, optimiser state**: 4 bytes per parameter each (fp32 master weights; AdamW keeps two
  moments, SGD with momentum one); DDP adds its gradient buckets (another fp32 copy of the gradients); FSDP2 keeps
  1/N of each and gathers the parameters of the block at work and the next one (all blocks when
  ``reshard_after_forward`` is false) in ``param_dtype``; CPU offload moves the shards to host memory; bf16
  autocast keeps a bf16 copy of every weight for the step.
* **activations**, per example, from what autograd saves in a pre-LN block (tokens ``T``, width ``D``, MLP ``M``):
  the block input, the LayerNorm outputs feeding the qkv and fc1 products, qkv, the attention output and its
  flattened copy, the residual after attention, the fc1 output and the GELU output: ``9 T D + 2 T M`` values (the
  attention matrix is not kept: SDPA's flash kernels recompute it); 4 bytes each in fp32, under bf16 autocast 4
  for the two fp32 residual tensors and 2 for the others. Dropout adds its scaled keep-masks (``M + 2 D`` values
  per token); attention dropout (0 in the paper) is not modelled. A checkpointed block keeps its input alone and one block
  is recomputed at a time in the backward pass. The stem (the image; a hybrid's ResNet, traced on the meta
  device), the final norm's input and the logits are added; the backward pass of one block needs a working set of
  ``2 T M + 4 T D`` values.
* **the step's peak** is ``parameters + optimiser state + max(activations + working set + gradients of the block
  at work, gradients + optimiser temporaries)``: the activations are freed as the gradients appear.

Checked against the peak resident memory of a real step on CPU (``vitlab plan --measure``; a test asks for 15%
on three small models). Time per epoch is ``images x training FLOPs / (GPUs x peak x MFU)`` at an *assumed* MFU
(the training FLOPs count the class-token-only last block and the recomputation of checkpointed blocks), so it is
an estimate to compare configurations, not a measurement.
"""
from __future__ import annotations

import math
import os
import resource
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import nn

from vitlab.config import RunConfig
from vitlab.errors import ConfigError
from vitlab.models import kernels
from vitlab.models.flops import count_model_macs
from vitlab.models.registry import create_model
from vitlab.train.objectives import Supervised
from vitlab.train.optim import build_optimizer

GIB = 2**30

# Training-set sizes and label counts of the paper's pre-training sets, for presets whose data lives elsewhere.
KNOWN_DATASETS: dict[str, tuple[int, int]] = {
    "i21k": (14_197_122, 21_843),  # ImageNet-21k (fall 2011)
    "jft": (303_000_000, 18_291),  # JFT-300M, as the paper describes it
    "imagenet": (1_281_167, 1000),  # ILSVRC-2012 train
}


@dataclass(frozen=True)
class Architecture:
    """The shape facts the memory model needs, read from the model built on the meta device."""

    name: str
    params: int
    block_params: int  # parameters of one Transformer block
    depth: int
    tokens: int  # T: patches + class token
    width: int
    mlp_dim: int
    heads: int
    image_values: int  # C x H x W
    stem_saved_values: int  # values the stem saves for backward per example (the image for a plain ViT)
    classes: int
    train_macs: int  # MACs of the training forward pass per example (class-token-only last block)
    block_macs: int  # MACs of one block per example
    dropout: float = 0.0


def architecture(cfg: RunConfig, classes: int) -> Architecture:
    """Build the configured model on the meta device and read its shape, size and MACs."""
    if cfg.model.name is None:
        raise ConfigError("vitlab plan needs model.name (an architecture), not only model.init_from")
    img = cfg.data.img_size or 224
    chans = cfg.data.in_chans or 3
    with torch.device("meta"):
        model = create_model(cfg.model.name, num_classes=classes, img_size=img, in_chans=chans, **cfg.model.overrides)
        images = torch.empty(1, chans, img, img)
        if not hasattr(model, "blocks"):
            raise ConfigError(f"model.name={cfg.model.name}: vitlab plan models ViTs and hybrids (Transformer blocks)")
        c = model.config
        tokens = c.grid_size[0] * c.grid_size[1] + model.num_prefix_tokens
        stem = _saved_per_example(model.patch_embed, images) if c.is_hybrid else chans * img * img
        train_macs = count_model_macs(model, images, last_block_cls_only=True)
        block_macs = count_model_macs(_BlockOnly(model.blocks[0]), torch.empty(1, tokens, c.width))
    return Architecture(
        name=cfg.model.name, params=sum(p.numel() for p in model.parameters()),
        block_params=sum(p.numel() for p in model.blocks[0].parameters()), depth=c.depth, tokens=tokens,
        width=c.width, mlp_dim=c.mlp_dim, heads=c.num_heads, image_values=chans * img * img,
        stem_saved_values=stem, classes=classes, train_macs=train_macs, block_macs=block_macs, dropout=c.dropout,
    )


class _BlockOnly(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.block(tokens)


def _saved_per_example(module: nn.Module, image: torch.Tensor) -> int:
    """Values autograd saves per example for ``module`` (traced on the meta device at batch 2 and 1: what does not
    grow with the batch, such as weights and their standardised copies, cancels)."""
    return _saved_values(module, image.expand(2, -1, -1, -1)) - _saved_values(module, image)


def _saved_values(module: nn.Module, images: torch.Tensor) -> int:
    """Values autograd saves for the backward pass of ``module(images)`` (meta tensors: no memory, no time)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor  # views share their base's memory
        seen[id(base)] = base.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(images)
    return sum(seen.values())


@dataclass(frozen=True)
class Setup:
    """How the step runs: strategy, GPUs, precision, checkpointing and the FSDP2 options."""

    strategy: str = "ddp"  # ddp | fsdp (one GPU: ddp means no wrapper)
    gpus: int = 1
    precision: str = "bf16"  # fp32 | bf16 | fp16 (autocast)
    checkpoint_every: int = 0  # 0 off, k: every k-th block
    optimizer: str = "adam"  # adam | sgd
    momentum: bool = True
    param_dtype: str = "fp32"
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    explicit_attention: bool = False  # CPU, fp32, at most kernels.EXPLICIT_ATTENTION_MAX_KEYS tokens


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU of one training step at micro-batch ``batch``."""

    params: float
    gradients: float
    optimizer: float
    activations: float  # saved for backward, all examples of the micro-batch
    workspace: float  # one block's backward working set + the block being recomputed
    transient_gradients: float  # unsharded gradients of the block at work (FSDP)

    @property
    def peak(self) -> float:
        during_backward = self.activations + self.workspace + self.transient_gradients
        return self.params + self.optimizer + max(during_backward, self.gradients + self.transient_gradients)

    @property
    def first_step_growth(self) -> float:
        """What one process's first step adds to the memory it had before (parameters exist; the optimiser state
        is created at the end of the step, once the activations are gone): what ``--measure`` checks."""
        return max(self.activations + self.workspace + self.transient_gradients, self.gradients + self.optimizer)


def uses_explicit_attention(arch: Architecture) -> bool:
    """Whether fp32 attention on a CPU takes the explicit product (see ``vitlab.models.kernels.attention``)."""
    return arch.tokens <= kernels.EXPLICIT_ATTENTION_MAX_KEYS


def _bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def checkpointed_blocks(depth: int, every: int) -> int:
    return 0 if every <= 0 else len(range(0, depth, every))



def memory(arch: Architecture, setup: Setup, batch: int) -> Memory:
    """The memory model (see the module docstring) for one GPU."""
    P, N = arch.params, max(setup.gpus, 1)
    half = setup.precision in ("bf16", "fp16")
    a = 2 if half else 4  # bytes of a product's output under autocast
    T, D, M, H = arch.tokens, arch.width, arch.mlp_dim, arch.heads
    # SDPA keeps its output and log-sum-exp; the explicit product of short fp32 CPU sequences keeps the softmax
    attention = (T * D * a + T * H * 4) if not setup.explicit_attention else T * T * H * 4
    full_block = (8 * T * D + 2 * T * M) * a + (2 * T * D * (4 - a)) + attention  # two fp32 residual tensors
    if arch.dropout > 0:  # torch's CPU / eager dropout keeps its scaled keep-mask, in the input's dtype
        full_block += (M + 2 * D) * T * a
    # The objective's last block computes the class token only: it keeps its input, LayerNorm output, k and v.
    last_block = T * D * (4 + 3 * a)
    kept_input = T * D * 4
    every, last = setup.checkpoint_every, arch.depth - 1
    kept = [every > 0 and index % every == 0 for index in range(arch.depth)]
    per_example = sum(kept_input if kept[i] else (last_block if i == last else full_block) for i in range(last + 1))
    per_example += arch.stem_saved_values * a + arch.classes * 4 * 3
    # The backward pass of a block: the gradient arriving from above and its copy, and for SDPA the gradients of
    # q, k, v and their stack into the qkv gradient (the explicit product works on views); with checkpointing,
    # the block being recomputed and its output's gradient.
    recomputed = max((last_block if i == last else full_block for i in range(last + 1) if kept[i]), default=0)
    workspace = (2 if setup.explicit_attention else 8) * T * D * 4 + (recomputed + 2 * T * D * 4 if recomputed else 0)
    moments = 2 if setup.optimizer == "adam" else (1 if setup.momentum else 0)
    cast_cache = 2 * P if half else 0  # autocast's bf16 copies of the weights, kept for the step
    if setup.strategy == "fsdp" and N > 1:
        pbytes = _bytes(setup.param_dtype)
        root = P - arch.depth * arch.block_params
        gathered_blocks = arch.depth if not setup.reshard_after_forward else 2
        gathered = (root + gathered_blocks * arch.block_params) * pbytes
        shard = 0 if setup.cpu_offload else P * 4 / N
        params = shard + gathered + (cast_cache if setup.param_dtype == "fp32" else 0)
        grads = shard
        optimizer = 0 if setup.cpu_offload else moments * P * 4 / N
        transient = arch.block_params * pbytes * 2  # unsharded gradients before the reduce-scatter
    else:
        params = P * 4 + cast_cache
        grads = P * 4 * (2 if N > 1 else 1)  # DDP: the gradients and their all-reduce buckets
        optimizer = moments * P * 4
        transient = 0
    return Memory(params=params, gradients=grads, optimizer=optimizer, activations=per_example * batch,
                  workspace=workspace * batch, transient_gradients=transient)


def largest_micro_batch(arch: Architecture, setup: Setup, budget_bytes: float, global_batch: int) -> int:
    """The largest micro-batch that fits ``budget_bytes`` and divides the per-GPU share of the global batch
    (0 when not even one example fits)."""
    share = global_batch // max(setup.gpus, 1)
    fits = [b for b in range(1, share + 1) if share % b == 0 and memory(arch, setup, b).peak <= budget_bytes]
    return max(fits, default=0)


def training_flops_per_example(arch: Architecture, setup: Setup) -> float:
    """Forward + backward (3x the forward) plus one more forward of every checkpointed block."""
    recompute = checkpointed_blocks(arch.depth, setup.checkpoint_every) * arch.block_macs
    return 2.0 * (3 * arch.train_macs + recompute)


@dataclass(frozen=True)
class PlanRow:
    strategy: str
    checkpointing: str
    memory: Memory
    micro_batch: int
    accumulation: int
    epoch_hours: float


def plan(cfg: RunConfig, *, gpus: int, gpu_memory_gib: float, train_images: int, classes: int,
         peak_tflops: float, mfu: float, reserve_gib: float = 2.0) -> tuple[Architecture, list[PlanRow]]:
    """One row per strategy x checkpointing (off / the config's choice or every block)."""
    arch = architecture(cfg, classes)
    precision = cfg.train.precision if cfg.train.precision != "auto" else "bf16"  # auto: bf16 on GPUs
    every = _every(cfg.train.activation_checkpointing) or 1
    d = cfg.distributed
    base = Setup(gpus=gpus, precision=precision, optimizer=cfg.optim.name, momentum=cfg.optim.momentum > 0,
                 param_dtype=d.param_dtype, reshard_after_forward=d.reshard_after_forward, cpu_offload=d.cpu_offload)
    budget = (gpu_memory_gib - reserve_gib) * GIB
    rows = []
    for strategy in ("ddp", "fsdp"):
        for ckpt in (0, every):
            setup = replace(base, strategy=strategy, checkpoint_every=ckpt)
            micro = largest_micro_batch(arch, setup, budget, cfg.train.batch_size)
            accumulation = cfg.train.batch_size // (gpus * micro) if micro else 0
            seconds = train_images * training_flops_per_example(arch, setup) / (gpus * peak_tflops * 1e12 * mfu)
            rows.append(PlanRow(strategy, "off" if not ckpt else ("every block" if ckpt == 1 else f"every {ckpt}"),
                                memory(arch, setup, max(micro, 1)), micro, accumulation, seconds / 3600))
    return arch, rows


def _every(setting: bool | int) -> int:
    return int(setting) if not isinstance(setting, bool) else (1 if setting else 0)


# ---- measuring a real step on the CPU ----------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure_first_step(cfg: RunConfig, batch: int, classes: int, checkpoint_every: int = 0) -> dict[str, Any]:
    """Resident-memory growth of one real training step (fp32, CPU, this process): the model, the batch and the
    optimiser are built first, then a sampling thread records the peak while the step runs.

    Run it in a fresh process with ``MALLOC_MMAP_THRESHOLD_`` set (``vitlab plan --measure`` does), so freed
    tensors go back to the system and the resident size follows the live tensors."""
    img, chans = cfg.data.img_size or 224, cfg.data.in_chans or 3
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=classes, img_size=img, in_chans=chans, **cfg.model.overrides)
    model.set_activation_checkpointing(checkpoint_every)
    model.train()
    optimizer = build_optimizer(model, cfg.optim, fused=True)
    images, labels = torch.randn(batch, chans, img, img), torch.randint(0, classes, (batch,))
    objective = Supervised(loss=cfg.train.loss)
    # A warm-up pass on one example: first-call costs (thread pools, kernel caches, autograd's engine) are not
    # the step's memory. Its gradients are dropped, so the measured step starts without any.
    warm_loss, _ = objective(model, images[:1], labels[:1])
    warm_loss.backward()
    model.zero_grad(set_to_none=True)
    del warm_loss
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    before, high_before = _rss_bytes(), _max_rss()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        loss, _ = objective(model, images, labels)
        loss.backward()
        optimizer.step()
    finally:
        done.set()
        sampler.join()
    high_after = _max_rss()
    if high_after > high_before:  # the step set the process's high-water mark: the kernel saw its true peak
        peak[0] = max(peak[0], high_after)
    return {"before_bytes": before, "peak_bytes": peak[0], "growth_bytes": peak[0] - before}


def fmt_gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def dataset_facts(preset: str, cfg: RunConfig) -> tuple[Optional[int], Optional[int]]:
    """(training images, classes) for presets of the paper's datasets; (None, None) otherwise."""
    name = os.path.basename(str(preset))
    for prefix, facts in KNOWN_DATASETS.items():
        if name.startswith(prefix):
            return facts
    return None, None


def check_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name}={value}: expected a positive number")
