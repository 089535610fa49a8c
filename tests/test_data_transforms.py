"""Batched preprocessing: inception crop geometry, resizing, RandAugment ops, mixing, channels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from vitlab.data import transforms as T
from vitlab.errors import ShapeError


def test_inception_crop_boxes_respect_area_and_aspect():
    rng = np.random.default_rng(0)
    n = 2000
    widths, heights = rng.integers(20, 400, n), rng.integers(20, 400, n)
    boxes = T.inception_crop_boxes(widths, heights, rng.random((n, T.CROP_ATTEMPTS, 4)))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= -1e-9).all() and (boxes[:, 1] >= -1e-9).all()
    assert (boxes[:, 2] <= widths + 1e-9).all() and (boxes[:, 3] <= heights + 1e-9).all()
    ratio = w / h
    assert (ratio >= T.CROP_RATIO[0] - 1e-9).all() and (ratio <= T.CROP_RATIO[1] + 1e-9).all()
    area = w * h / (widths * heights)
    assert area.min() >= T.CROP_AREA[0] - 1e-9 and area.max() <= 1 + 1e-9
    square = T.inception_crop_boxes(np.full(n, 100), np.full(n, 100), rng.random((n, T.CROP_ATTEMPTS, 4)))
    square_area = (square[:, 2] - square[:, 0]) * (square[:, 3] - square[:, 1]) / 1e4
    assert 0.4 < np.median(square_area) < 0.6  # proposals uniform in area over 5%..100%


def test_resize_full_box_matches_bilinear_interpolation():
    x = torch.rand(3, 2, 10, 14) * 255
    full = np.array([[0, 0, 14, 10]] * 3, dtype=np.float64)
    for size in [(20, 28), (16, 16)]:
        ours = T.resize(x, size, full)
        ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        assert torch.allclose(ours, ref, atol=1e-3)
    assert torch.equal(T.resize(x, (10, 14)), x)


def test_resize_crop_takes_the_box_content():
    x = torch.zeros(1, 1, 20, 20)
    x[..., 5:10, 5:10] = 200.0
    out = T.resize(x, (5, 5), np.array([[5.0, 5.0, 10.0, 10.0]]))
    assert torch.allclose(out, torch.full_like(out, 200.0))


def test_flip_and_channels():
    x = torch.arange(8.0).view(2, 1, 2, 2)
    flipped = T.flip(x, np.array([True, False]))
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
    assert T.adapt_channels(x, 3).shape == (2, 3, 2, 2)
    rgb = torch.rand(2, 3, 4, 4) * 255
    grey = T.adapt_channels(rgb, 1)
    assert torch.allclose(grey[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    with pytest.raises(ShapeError):
        T.adapt_channels(torch.rand(1, 2, 4, 4), 3)
    assert T.normalize(torch.tensor([0.0, 255.0])).tolist() == [-1.0, 1.0]


def test_translate_is_pad_and_crop_at_the_drawn_offset():
    rng = np.random.default_rng(1)
    x = torch.rand(5, 3, 7, 9) * 255
    uniforms = rng.random((5, 2))
    uniforms[0] = [0.0, 0.9999]  # the extremes: window at the top of the padded image and at its right end
    moved = T.translate(x, uniforms, 2)
    padded = F.pad(x, (2, 2, 2, 2))
    for i, (u, v) in enumerate(uniforms):
        dy, dx = int(u * 5), int(v * 5)  # offsets 0..4 into the padded image
        assert torch.equal(moved[i], padded[i, :, dy:dy + 7, dx:dx + 9])
    assert torch.equal(moved[0, :, :2], torch.zeros(3, 2, 9))  # shifted down by 2: black rows on top
    assert torch.equal(T.translate(x, uniforms, 0), x)
    dot = torch.zeros(2000, 1, 5, 5)
    dot[:, :, 2, 2] = 1.0
    landed = T.translate(dot, rng.random((2000, 2)), 2).sum(0)[0]
    assert (landed > 0).all()  # the centre pixel reaches every position: shifts -2..2 both ways


def _draws(n, op, layers=1):
    d = T.draw(T.AUGMENT_LEVELS["strong1"], 0, 0, 0, n)
    d.ra_ops[:] = T.RANDAUG_OPS.index(op)
    d.ra_apply[:] = True
    return d


@pytest.mark.parametrize("op", T.RANDAUG_OPS)
def test_each_randaugment_op_keeps_shape_and_range(op):
    x = torch.rand(6, 3, 16, 16) * 255
    out = T.rand_augment(x, _draws(6, op), layers=1, magnitude=10)
    assert out.shape == x.shape and float(out.min()) >= -1e-3 and float(out.max()) <= 255 + 1e-3
    if op == "identity":
        assert torch.equal(out, x)
    zero = T.rand_augment(x, _draws(6, op), layers=1, magnitude=0)
    if op in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "color", "contrast", "brightness",
              "sharpness", "solarize_add", "posterize", "cutout"):
        assert torch.allclose(zero, x, atol=1e-3), f"{op} at magnitude 0 should be the identity"


def test_randaugment_ops_agree_with_pil():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 3, 12, 12)).astype(np.uint8)
    x = torch.from_numpy(img).float()
    inv = T.rand_augment(x, _draws(2, "invert"), 1, 10)
    pil = [np.asarray(ImageOps.invert(Image.fromarray(i.transpose(1, 2, 0)))).transpose(2, 0, 1) for i in img]
    assert np.array_equal(inv.numpy(), np.stack(pil))
    sol = T.rand_augment(x, _draws(2, "solarize"), 1, 5)  # threshold 128
    pil = [np.asarray(ImageOps.solarize(Image.fromarray(i.transpose(1, 2, 0)), 128)).transpose(2, 0, 1) for i in img]
    assert np.array_equal(sol.numpy(), np.stack(pil))
    eq = T.rand_augment(x, _draws(2, "equalize"), 1, 10)
    assert eq.shape == x.shape and eq.amax() <= 255 and eq.amin() >= 0
    # equalisation spreads a narrow histogram over the full range
    narrow = torch.full((1, 1, 8, 8), 100.0)
    narrow[..., :4] = 110.0
    assert float(T.rand_augment(narrow, _draws(1, "equalize"), 1, 10).max()) == 255.0


def test_rotate_90_matches_a_rotation_of_the_pixels():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 1, 4] = 255.0  # a dot above the centre
    d = _draws(1, "rotate")
    d.ra_sign[:] = 1.0
    out = T.rand_augment(x, d, 1, magnitude=30)  # 30 deg * 3 = 90 deg
    peak = divmod(int(out.argmax()), 9)
    assert peak in ((4, 1), (4, 7))


def test_mixup_and_cutmix_targets():
    spec = T.AUGMENT_LEVELS["deit"]
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8) % 4
    for step in range(6):
        d = T.draw(spec, 1, 0, step, 8)
        xm, ym = T.mix(x, y, 4, d, spec)
        assert ym.shape == (8, 4) and torch.allclose(ym.sum(1), torch.ones(8))
        lam = float(ym[0, y[0]]) if y[0] != y[7] else None
        if lam is not None and not d.use_cutmix:
            assert torch.allclose(xm[0], lam * x[0] + (1 - lam) * x[7], atol=1e-5)


def test_random_erasing_only_touches_chosen_images():
    spec = T.AugmentSpec(erase_prob=0.5)
    d = T.draw(spec, 0, 0, 0, 16)
    x = torch.zeros(16, 3, 16, 16)
    out = T.random_erase(x, d)
    changed = (out != 0).flatten(1).any(1).numpy()
    assert changed.any() and not changed[~d.erase_apply].any()
