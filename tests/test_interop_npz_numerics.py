"""An .npz export cannot record exact GELU: the export warns and says how to keep the numerics."""
from __future__ import annotations

import logging

import torch

import vitlab
from vitlab.interop import official


def _model(gelu: str):
    torch.manual_seed(0)
    model = vitlab.create_model("vit_ti8", num_classes=3, img_size=16, depth=1, width=32, mlp_dim=64, num_heads=2,
                                gelu=gelu).eval()
    torch.nn.init.normal_(model.head.weight)  # the head starts at zero: make the logits depend on the features
    return model


def test_exact_gelu_export_warns_and_the_advised_reload_is_exact(tmp_path, caplog) -> None:
    model = _model("exact")
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        official.save_npz(model, tmp_path / "m.npz")
    assert len(caplog.records) == 1 and "exact GELU" in caplog.text and "gelu='exact'" in caplog.text
    x = torch.randn(2, 3, 16, 16) * 3
    with torch.no_grad():
        plain = official.load_npz_any(tmp_path / "m.npz")(x)  # what any reader of the layout does: tanh GELU
        advised = official.load_npz_any(tmp_path / "m.npz", gelu="exact")(x)
        reference = model(x)
    assert torch.equal(advised, reference)
    assert not torch.equal(plain, reference)  # the drift the warning is about


def test_tanh_gelu_export_is_silent(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        official.save_npz(_model("tanh"), tmp_path / "m.npz")
    assert caplog.records == []
