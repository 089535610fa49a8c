"""Optimiser groups, schedules, EMA and losses: the pieces of the paper's recipes, checked against the text."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.config import OptimSection
from vitlab.train.objectives import Supervised
from vitlab.train.optim import EMA, Schedule, build_optimizer, param_groups


def _tiny_vit():
    return vitlab.create_model("vit_ti4", num_classes=5, img_size=16, depth=2, width=32, mlp_dim=64, num_heads=2)


def test_weight_decay_only_on_weight_matrices():
    """Appendix B.1 / big_vision: decay kernels only, not biases, norms, position embeddings, class token."""
    model = _tiny_vit()
    decayed, plain = param_groups(model, 0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    for name in plain["names"]:
        param = dict(model.named_parameters())[name]
        assert param.ndim < 2 or name.startswith("pos_embed") or name == "cls_token", name
    for name in decayed["names"]:
        assert name.endswith("weight") and dict(model.named_parameters())[name].ndim >= 2, name
    assert "cls_token" in plain["names"]
    assert any(n.startswith("pos_embed") for n in plain["names"])
    assert any("norm" in n for n in plain["names"]) and not any("norm" in n for n in decayed["names"])
    assert "patch_embed.proj.weight" in decayed["names"] and "head.weight" in decayed["names"]
    assert len(decayed["names"]) + len(plain["names"]) == len(list(model.parameters()))


def test_decoupled_decay_is_multiplied_by_the_learning_rate():
    """With zero gradients, one AdamW step shrinks a weight matrix by exactly (1 - lr * wd); biases stay."""
    model = _tiny_vit()
    opt = build_optimizer(model, OptimSection(name="adam", lr=0.01, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    w = "blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(after[w], before[w] * (1 - 0.01 * 0.1))
    b = "blocks.0.mlp.fc1.bias"
    torch.testing.assert_close(after[b], before[b])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    sgd = build_optimizer(model, OptimSection(name="sgd", lr=0.01))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


def test_schedules_warm_up_then_decay_to_the_end_value():
    lin = Schedule(base_lr=1e-3, total_steps=110, warmup_steps=10, kind="linear", end_lr=1e-5)
    assert lin(0) == pytest.approx(1e-4)  # the first step already moves
    assert lin(9) == pytest.approx(1e-3)
    assert lin(10) == pytest.approx(1e-3)
    assert lin(60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lin(110) == pytest.approx(1e-5)
    cos = Schedule(base_lr=0.03, total_steps=500, warmup_steps=100, kind="cosine")
    assert cos(100) == pytest.approx(0.03)
    assert cos(300) == pytest.approx(0.015)
    assert cos(500) == pytest.approx(0.0, abs=1e-12)
    values = [cos(s) for s in range(100, 501)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert Schedule(0.1, 50, 0, "constant")(49) == 0.1


def test_ema_is_polyak_averaging():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], start + 0.1)
    copy = torch.nn.Linear(3, 2)
    ema.copy_to(copy)
    torch.testing.assert_close(copy.weight, start + 0.1)


def test_softmax_and_sigmoid_cross_entropy_with_label_smoothing():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    model = lambda x: logits  # noqa: E731 - the objective only calls model(images)
    images = torch.zeros(6, 1)
    loss, stats = Supervised("softmax", 0.1)(model, images, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets, label_smoothing=0.1))
    assert int(stats["correct"]) == int((logits.argmax(-1) == targets).sum()) and int(stats["count"]) == 6
    loss, _ = Supervised("sigmoid")(model, images, targets)
    onehot = F.one_hot(targets, 4).float()
    expected = F.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / 6  # summed over classes
    torch.testing.assert_close(loss, expected)
    soft = torch.softmax(torch.randn(6, 4), -1)  # mixup targets
    loss, _ = Supervised("softmax")(model, images, soft)
    torch.testing.assert_close(loss, torch.sum(-soft * F.log_softmax(logits, -1), -1).mean())
    assert math.isfinite(float(loss))
