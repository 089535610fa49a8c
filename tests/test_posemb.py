"""Position embeddings and their resizing for higher-resolution fine-tuning (Section 3.2)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitlab
from vitlab.models.posemb import resize_pos_embed


def scipy_reference(pos_embed: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """What the official code does: zoom the [gh, gw, D] grid with order-1 spline interpolation."""
    grid = pos_embed[0, 1:].reshape(old[0], old[1], -1).double().numpy()
    zoomed = scipy.ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    assert zoomed.shape[:2] == new
    return torch.cat([pos_embed[:, :1], torch.from_numpy(zoomed).float().reshape(1, -1, grid.shape[-1])], dim=1)


@settings(max_examples=25, deadline=None)
@given(old_h=st.integers(2, 14), old_w=st.integers(2, 14), new_h=st.integers(2, 24), new_w=st.integers(2, 24))
def test_official_resize_matches_scipy_zoom_order1(old_h: int, old_w: int, new_h: int, new_w: int) -> None:
    # scipy rounds the output shape from the zoom factor; keep cases where it lands on the requested grid.
    if round(old_h * (new_h / old_h)) != new_h or round(old_w * (new_w / old_w)) != new_w:
        return
    pos = torch.randn(1, 1 + old_h * old_w, 8)
    ours = resize_pos_embed(pos, (new_h, new_w), num_prefix_tokens=1, method="official", old_grid=(old_h, old_w))
    torch.testing.assert_close(ours, scipy_reference(pos, (old_h, old_w), (new_h, new_w)), atol=1e-5, rtol=1e-5)


def test_paper_case_14_to_24_keeps_class_token() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 16)
    out = resize_pos_embed(pos, 24)
    assert out.shape == (1, 1 + 24 * 24, 16)
    assert torch.equal(out[:, 0], pos[:, 0])
    torch.testing.assert_close(out, scipy_reference(pos, (14, 14), (24, 24)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_torch_methods_resize_too(method: str) -> None:
    pos = torch.randn(1, 1 + 7 * 7, 8)
    out = resize_pos_embed(pos, (12, 12), method=method)
    assert out.shape == (1, 1 + 144, 8)
    assert not torch.allclose(out, resize_pos_embed(pos, (12, 12), method="official"))


def test_checkpoint_of_224_loads_into_384_model(tmp_path) -> None:
    model = vitlab.create_model("vit_ti16", num_classes=3, depth=2)
    path = tmp_path / "m.safetensors"
    vitlab.save_model(model, path)
    big = vitlab.load_model(path, img_size=384)
    assert big.pos_embed.weight.shape == (1, 1 + 24 * 24, 192)
    expected = resize_pos_embed(model.pos_embed.weight.detach(), 24)
    torch.testing.assert_close(big.pos_embed.weight.detach(), expected)
    assert big(torch.randn(1, 3, 384, 384)).shape == (1, 3)


def test_set_input_size_resizes_learned_and_2d_tables() -> None:
    for posemb in ("learned", "learned_2d", "sincos_2d"):
        model = vitlab.create_model("vit_ti8", num_classes=2, img_size=32, depth=1, posemb=posemb)
        model.set_input_size(64)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)
        assert model.pos_embed.grid == (8, 8)


def test_sincos_has_no_parameters_and_none_adds_nothing() -> None:
    sincos = vitlab.create_model("vit_ti8", img_size=32, depth=1, posemb="sincos_2d")
    assert not [n for n, _ in sincos.named_parameters() if n.startswith("pos_embed")]
    none = vitlab.create_model("vit_ti8", img_size=32, depth=1, posemb="none")
    tokens = torch.randn(1, 17, 192)
    assert torch.equal(none.pos_embed(tokens), tokens)


def test_learned_2d_is_row_and_column_halves() -> None:
    model = vitlab.create_model("vit_ti8", img_size=(16, 24), depth=1, posemb="learned_2d")
    table = model.pos_embed.table()[0, 1:].reshape(2, 3, 192)
    assert torch.equal(table[1, 2, :96], model.pos_embed.row[1]) and torch.equal(table[1, 2, 96:], model.pos_embed.col[2])
