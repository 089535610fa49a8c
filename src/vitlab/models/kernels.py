"""Kernel choices that keep a layer's math and avoid PyTorch's slow paths (measured in ``docs/performance.md``).

On a CPU without bf16 instructions (no AVX512-BF16 / AMX; oneDNN then declines bf16), PyTorch computes a bf16
matrix product with its reference kernel, whose speed depends on the operands' memory layout by a factor of up to
seven: ``A.T @ B`` with both ``A`` and ``B`` row-major (the reduction running over their rows) is the fast case,
while the layout that ``nn.Linear``'s backward uses for the input gradient (``grad @ W``) is the slowest. Every
layout accumulates in fp32 and rounds the result to bf16 once, so choosing the fast one changes no numbers beyond
summation order. :func:`linear` does that; everywhere else (fp32, GPUs, CPUs with native bf16) it is ``F.linear``.

:func:`attention` computes ``softmax(q k^T / sqrt(d)) v``. PyTorch's CPU flash-attention kernel is made for long
sequences; for the few tokens of small images (17 for 28-px images in 7x7 patches) the explicit product, whose
score matrix is tiny, is two to three times faster forward plus backward. In bf16 on a CPU with native bf16 the
flash kernel's backward is slower still, and the explicit product wins up to ViT-S/16's 197 tokens. Same math,
other summation order (the softmax accumulates in fp32 and rounds its probabilities to bf16, as the flash kernel
does before its second product).

Which of the two is faster inside a model also depends on the CPU: on an Intel Xeon with AMX the Fashion-MNIST
tiny ViT's fp32 training step (17 tokens) ran faster through SDPA, although the product alone on contiguous tensors
still favoured the explicit one there (docs/performance.md). The thresholds are therefore the default, and
:func:`sdpa_attention` switches the explicit path off where a measurement on the machine at hand found SDPA faster
(``vitlab.train.attention_probe`` decides, for the training engine and the benchmarks);
:func:`recording_attention_paths` tells such a measurement whether a model takes the explicit path at all.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F


def _query_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


# Asked once at import: a constant is what torch.compile can trace through without a graph break.
_NATIVE_BF16 = _query_native_bf16()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matrix products natively on this CPU (AVX512-BF16, AMX)."""
    return _NATIVE_BF16


def uses_reference_bf16(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when ``F.linear(x, weight)`` would run PyTorch's reference bf16 GEMM (CPU, bf16, no native support)."""
    if x.device.type != "cpu" or cpu_has_native_bf16():
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") == torch.bfloat16
    return x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` with the fast operand layouts of the reference bf16 GEMM where that kernel is in use."""
    if not uses_reference_bf16(x, weight):
        return F.linear(x, weight, bias)
    bf16 = torch.bfloat16
    # Cast as autocast would (the casts are recorded, so gradients reach fp32 parameters in fp32), then compute
    # with autocast off so that the products below stay in bf16.
    with torch.autocast("cpu", enabled=False):
        return _ReductionMajorLinear.apply(
            x.to(bf16), weight.to(bf16), None if bias is None else bias.to(bf16)
        )


def _t_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a.T @ b`` for row-major ``a [K, M]`` and ``b [K, N]``: the fast layout of the reference kernel."""
    return torch.mm(a.t(), b)


class _ReductionMajorLinear(torch.autograd.Function):
    """``y = x W^T + b`` whose three products all run as ``A.T @ B`` with row-major ``A`` and ``B``.

    The transposed copies this needs (``x``, ``W`` forward; the output gradient backward) cost one pass over a
    matrix each, against a product that reads it ``N`` times.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # [M, K]
        rows_t, weight_t = rows.t().contiguous(), weight.t().contiguous()  # [K, M], [K, N]
        # addmm adds the bias before the one rounding to bf16, as F.linear does.
        out = torch.mm(rows_t.t(), weight_t) if bias is None else torch.addmm(bias, rows_t.t(), weight_t)  # [M, N]
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1]).contiguous()  # [M, N]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _t_mm(grad_rows.t().contiguous(), weight)  # [M, K]
            grad_x = grad_x.view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = _t_mm(grad_rows, rows)  # [N, K]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(0)
        return grad_x, grad_w, grad_b


# Up to this many keys, the explicit product beats the CPU flash-attention kernel in fp32 (forward + backward; the
# measurements behind the threshold are in docs/performance.md).
EXPLICIT_ATTENTION_MAX_KEYS = 64
# The same in bf16 on a CPU with native bf16 (oneDNN's bf16 GEMMs): the flash kernel's bf16 backward is slow there,
# so the explicit product wins up to far longer sequences (measured up to 401 keys, 320 px in 16x16 patches:
# ``benchmarks/attention.py --dtype bf16``; the figures are in docs/performance.md).
EXPLICIT_ATTENTION_MAX_KEYS_BF16 = 401


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias)``: ``[..., Nq, Nk]`` for ``q [..., Nq, d]``, ``k [..., Nk, d]``; ``bias``
    (e.g. relative position logits) broadcasts to ``[..., Nq, Nk]``."""
    logits = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    return torch.softmax(logits if bias is None else logits + bias, dim=-1)


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype the products of ``q`` run in: autocast's where it is on (CPU), else ``q``'s own."""
    if q.dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return q.dtype


# False while :func:`sdpa_attention` is active: every attention goes through SDPA.
_EXPLICIT_ALLOWED = True
# While :func:`recording_attention_paths` is active: one entry per attention call, True for the explicit product.
_PATH_LOG: Optional[list[bool]] = None


@contextmanager
def sdpa_attention(enabled: bool = True) -> Iterator[None]:
    """Every attention through SDPA while active (``enabled=False``: the default choice, i.e. no change)."""
    global _EXPLICIT_ALLOWED
    saved = _EXPLICIT_ALLOWED
    _EXPLICIT_ALLOWED = saved and not enabled
    try:
        yield
    finally:
        _EXPLICIT_ALLOWED = saved


@contextmanager
def recording_attention_paths() -> Iterator[list[bool]]:
    """A list that collects, per call of :func:`attention` while active, whether it took the explicit product."""
    global _PATH_LOG
    saved, _PATH_LOG = _PATH_LOG, []
    try:
        yield _PATH_LOG
    finally:
        _PATH_LOG = saved


def uses_explicit_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """True where :func:`attention` computes the product explicitly: on a CPU, few keys, fp32 or native bf16,
    unless :func:`sdpa_attention` is active.

    bf16 without native support (PyTorch's reference GEMM) keeps SDPA: the explicit path was not measured there.
    """
    if q.device.type != "cpu" or not _EXPLICIT_ALLOWED:
        return False
    dtype = _compute_dtype(q)
    if dtype == torch.float32:
        return k.shape[-2] <= EXPLICIT_ATTENTION_MAX_KEYS
    if dtype == torch.bfloat16 and cpu_has_native_bf16():
        return k.shape[-2] <= EXPLICIT_ATTENTION_MAX_KEYS_BF16
    return False


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` with dropout on the probabilities: SDPA, or the explicit product where
    faster. ``bias`` is an additive float term on the logits (SDPA's float ``attn_mask``)."""
    explicit = uses_explicit_attention(q, k)
    if _PATH_LOG is not None:
        _PATH_LOG.append(explicit)
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    probs = attention_probs(q, k, bias)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return torch.matmul(probs, v)
