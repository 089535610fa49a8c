"""The numeric precision a run trains in: fp32, bf16 autocast, or fp16 autocast with loss scaling."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


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
