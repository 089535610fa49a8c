"""The model's speed paths compute what the plain layers compute (issue 7: faster, same math).

* ``vitlab.models.kernels.linear``: the reduction-major bf16 GEMM layout used on CPUs without native bf16;
* the patch embedding as a matrix product over patches (same path, bf16 on such CPUs);
* ``last_block_cls_only``: the last block for the class token only; same logits and gradients;
* ``vitlab.models.kernels.attention``: the explicit ``softmax(q k^T) v`` for short fp32 sequences on a CPU.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.models import kernels
from vitlab.models.flops import count_model_macs
from vitlab.models.vit import patchify

from conftest import jitter_, relative_error


def small_vit(**overrides) -> torch.nn.Module:
    options = dict(num_classes=5, img_size=32, patch_size=8, depth=3, width=64, mlp_dim=128, num_heads=4)
    options.update(overrides)
    return jitter_(vitlab.create_model("vit_ti16", **options))


def loss_and_grads(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bf16: bool = False,
                   cls_only: bool = False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(images, last_block_cls_only=True) if cls_only else model(images)
    F.cross_entropy(logits.float(), labels).backward()
    return logits.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_reduction_major_linear_matches_linear_in_bf16() -> None:
    x = torch.randn(3, 17, 48, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(40, 48, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(40, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(3, 17, 40, dtype=torch.bfloat16)
    ours = kernels._ReductionMajorLinear.apply(x, w, b)
    ours.backward(g)
    got = [ours.detach(), x.grad, w.grad, b.grad]
    x.grad = w.grad = b.grad = None
    ref = F.linear(x, w, b)
    ref.backward(g)
    want = [ref.detach(), x.grad, w.grad, b.grad]
    for a, e in zip(got, want):
        assert a.dtype == e.dtype == torch.bfloat16 and a.shape == e.shape
        assert relative_error(e.float(), a.float()) < 1e-2  # both: fp32 accumulation, one rounding to bf16


def test_kernel_choice_follows_dtype_and_hardware() -> None:
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    assert not kernels.uses_reference_bf16(x, w)  # fp32: always F.linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.uses_reference_bf16(x, w) == (not kernels.cpu_has_native_bf16())
        assert kernels.linear(x, w).dtype == torch.bfloat16  # autocast's output dtype either way
    assert kernels.uses_reference_bf16(x.bfloat16(), w.bfloat16()) == (not kernels.cpu_has_native_bf16())
    assert torch.equal(kernels.linear(x, w), F.linear(x, w))


def test_model_in_bf16_matches_the_plain_layers(monkeypatch) -> None:
    model = small_vit(gelu="exact")
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    monkeypatch.setattr(kernels, "uses_reference_bf16", lambda *args: True)  # the fast path, whatever the CPU
    fast_logits, fast_grads = loss_and_grads(model, images, labels, bf16=True)
    monkeypatch.setattr(kernels, "uses_reference_bf16", lambda *args: False)  # nn.Linear / conv under autocast
    ref_logits, ref_grads = loss_and_grads(model, images, labels, bf16=True)
    fp32_logits, _ = loss_and_grads(model, images, labels)
    assert relative_error(ref_logits, fast_logits) < 2e-2
    assert relative_error(fp32_logits, fast_logits) < 3e-2
    assert fast_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert fast_grads[name].dtype == torch.float32  # gradients reach the fp32 parameters in fp32
        assert relative_error(ref_grads[name], fast_grads[name]) < 5e-2, name


@pytest.mark.parametrize("keys", [17, 65])  # the explicit product, then SDPA
def test_attention_matches_sdpa_with_gradients(keys: int) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, keys, 32, requires_grad=True) for _ in range(3))
    assert kernels.uses_explicit_attention(q, k) == (keys <= kernels.EXPLICIT_ATTENTION_MAX_KEYS)
    grad = torch.randn(3, 4, keys, 32)
    ours = kernels.attention(q, k, v)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    reference = F.scaled_dot_product_attention(q, k, v)
    reference_grads = torch.autograd.grad(reference, (q, k, v), grad)
    assert relative_error(reference, ours) < 1e-5
    for got, want in zip(ours_grads, reference_grads):
        assert relative_error(want, got) < 1e-5
    # A single query against every key (the pruned last block) takes the same path.
    assert relative_error(F.scaled_dot_product_attention(q[:, :, :1], k, v), kernels.attention(q[:, :, :1], k, v)) < 1e-5


def test_attention_kernel_choice_and_dropout(monkeypatch) -> None:
    q = k = v = torch.randn(2, 2, 17, 8)
    assert kernels.uses_explicit_attention(q, k)
    assert not kernels.uses_explicit_attention(q.double(), k.double())  # fp32 only: SDPA elsewhere
    monkeypatch.setattr(kernels, "_NATIVE_BF16", False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.uses_explicit_attention(q, k)  # bf16 products go through SDPA, not the reference GEMM
    assert not kernels.uses_explicit_attention(q.bfloat16(), k.bfloat16())
    monkeypatch.setattr(kernels, "_NATIVE_BF16", True)  # oneDNN's bf16: explicit up to the longer bf16 threshold
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.uses_explicit_attention(q, k)
    long = torch.randn(1, 1, kernels.EXPLICIT_ATTENTION_MAX_KEYS_BF16 + 1, 8).bfloat16()
    assert kernels.uses_explicit_attention(long[:, :, :197], long[:, :, :197])
    assert not kernels.uses_explicit_attention(long, long)
    dropped = kernels.attention(q, k, torch.ones_like(v), dropout_p=0.5)
    # Each output is a sum of kept probabilities scaled by 2: not 1 everywhere once some are dropped.
    assert not torch.allclose(dropped, torch.ones_like(dropped))
    assert torch.allclose(kernels.attention(q, k, torch.ones_like(v)), torch.ones(2, 2, 17, 8))


@pytest.mark.skipif(not kernels.cpu_has_native_bf16(), reason="the explicit bf16 path runs on CPUs with native bf16")
def test_bf16_explicit_attention_matches_sdpa_under_autocast() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 197, 32, requires_grad=True) for _ in range(3))
    grad = torch.randn(3, 4, 197, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.uses_explicit_attention(q, k)
        ours = kernels.attention(q, k, v)
    assert ours.dtype == torch.bfloat16
    ours_grads = torch.autograd.grad(ours.float(), (q, k, v), grad)
    reference = F.scaled_dot_product_attention(q, k, v)  # fp32 SDPA: the exact answer
    reference_grads = torch.autograd.grad(reference, (q, k, v), grad)
    assert relative_error(reference, ours.float()) < 2e-2
    for got, want in zip(ours_grads, reference_grads):
        assert relative_error(want, got) < 3e-2


def test_patch_embedding_as_matrix_product_equals_the_conv() -> None:
    model = small_vit(in_chans=2)
    proj = model.patch_embed.proj
    images = torch.randn(3, 2, 32, 32)
    conv = proj(images).flatten(2).transpose(1, 2)
    matmul = F.linear(patchify(images, 8), proj.weight.flatten(1), proj.bias)
    assert matmul.shape == conv.shape == (3, 16, 64)
    assert relative_error(conv, matmul) < 1e-6


@pytest.mark.parametrize("bf16", [False, True])
def test_last_block_cls_only_keeps_logits_and_gradients(bf16: bool) -> None:
    model = small_vit(representation_size=32)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    full_logits, full_grads = loss_and_grads(model, images, labels, bf16)
    short_logits, short_grads = loss_and_grads(model, images, labels, bf16, cls_only=True)
    tol = 2e-2 if bf16 else 1e-5
    assert relative_error(full_logits, short_logits) < tol
    if not bf16:
        assert float((full_logits - short_logits).abs().max()) < 1e-5
    assert short_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        if grad.norm() > 0:
            assert relative_error(grad, short_grads[name]) < (5e-2 if bf16 else 1e-4), name
    with torch.no_grad():  # the plain faces keep every token; the shortcut returns the class token only
        assert model.forward_features(images).shape == (4, 17, 64)
        assert model.forward_features(images, last_block_cls_only=True).shape == (4, 1, 64)


def test_model_is_head_of_features_and_the_last_block_sees_every_token() -> None:
    """``model(x)`` goes through ``forward_features`` (a subclass's override counts) and runs the full last block."""
    base = small_vit().eval()

    class Shifted(type(base)):  # type: ignore[misc, valid-type]
        def forward_features(self, images, **options):
            return super().forward_features(images, **options) + 1.0

    shifted = Shifted(base.config)
    shifted.load_state_dict(base.state_dict())
    shifted.eval()
    images = torch.randn(2, 3, 32, 32)
    seen: list[tuple[int, ...]] = []
    base.blocks[-1].register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        plain = base(images)
        assert torch.equal(plain, base.forward_head(base.forward_features(images)))
        assert not torch.allclose(shifted(images), plain, atol=1e-3)
        assert torch.allclose(shifted(images), base.forward_head(base.forward_features(images) + 1.0), atol=1e-6)
        base(images, last_block_cls_only=True)
    assert seen[0] == (2, 17, 64) and seen[-1] == (2, 1, 64)  # model(x): every token; the opt-in: the class token


def test_classification_objective_asks_for_the_shortcut() -> None:
    from vitlab.train.objectives import Supervised

    model = small_vit()
    shapes: list[tuple[int, ...]] = []
    model.blocks[-1].register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2,))
    loss, _ = Supervised()(model, images, labels)
    full, _ = Supervised(last_block_cls_only=False)(model, images, labels)
    assert shapes == [(2, 1, 64), (2, 17, 64)]
    assert abs(loss.detach().item() - full.detach().item()) < 1e-5


def test_the_shortcut_saves_the_last_blocks_patch_work_and_leaves_gap_models_alone() -> None:
    with torch.device("meta"):
        model = vitlab.create_model("vit_s16", num_classes=1000)
        images = torch.empty(1, 3, 224, 224)
        full = count_model_macs(model, images)  # the architecture's: model(x) runs every block in full
        short = count_model_macs(model, images, last_block_cls_only=True)
    # One of 12 blocks keeps only its k, v projections (2 of its 12 D^2 per token) and one query: ~6.9% saved.
    assert 0.06 < 1 - short / full < 0.08
    gap = small_vit(classifier="gap").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(gap(x, last_block_cls_only=True), gap(x))
