"""The paper's preprocessing and the small-data extras, applied to whole batches of tensors.

The ViT paper pre-trains with an Inception-style random resized crop plus a horizontal flip, fine-tunes at a
fixed resolution, and feeds pixels scaled to [-1, 1]. Small data sets need more (DeiT, AugReg): RandAugment,
Mixup/CutMix and random erasing, grouped into named strength levels (:data:`AUGMENT_LEVELS`).

Everything here works on a batch ``[B, C, H, W]`` at once (on CPU or GPU), because a per-image PIL call
makes a 28-pixel data set slower to augment than to train on. Randomness never comes from a global RNG:
:func:`draw` turns ``(seed, epoch, step)`` into every random number a global batch needs, one row per
sample position, so the same batch comes out whenever (and on whichever rank) it is made.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.errors import ConfigError, ShapeError


@dataclass(frozen=True)
class AugmentSpec:
    """One named augmentation level. Magnitudes follow RandAugment's 0..10 scale (10 = "full strength")."""

    crop: bool = False              # Inception-style random resized crop
    shift: int = 0                  # random translation by up to this many pixels (pad with black, crop)
    flip: bool = False              # horizontal flip with probability 1/2
    randaug_layers: int = 0         # RandAugment: ops per image
    randaug_magnitude: float = 0.0  # RandAugment: strength, 0 = identity for the magnitude-driven ops
    mixup_alpha: float = 0.0        # Beta(alpha, alpha) mixing weight; 0 = off
    cutmix_alpha: float = 0.0       # CutMix box from Beta(alpha, alpha); 0 = off
    cutmix_prob: float = 0.5        # when both are on: probability a batch uses CutMix instead of Mixup
    erase_prob: float = 0.0         # random erasing probability per image

    @property
    def soft_targets(self) -> bool:
        """Mixing produces [B, K] probability targets instead of class indices."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


AUGMENT_LEVELS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(),
    "flip": AugmentSpec(flip=True),
    # The small-image recipe (MNIST/CIFAR "pad and random crop"): translations of up to 2 pixels, which a
    # 28-pixel image with centred objects can take without cutting the object; with and without a flip.
    "shift": AugmentSpec(shift=2),
    "shift_flip": AugmentSpec(shift=2, flip=True),
    # ViT paper, pre-training: "inception crop + flip" (official input pipeline).
    "paper": AugmentSpec(crop=True, flip=True),
    # AugReg (Steiner et al. 2021, "How to train your ViT?", big_vision vit_i21k_augreg config):
    # paper augmentation + RandAugment(2, m) + Mixup(alpha).
    "light1": AugmentSpec(crop=True, flip=True, randaug_layers=2, randaug_magnitude=0, mixup_alpha=0.0),
    "light2": AugmentSpec(crop=True, flip=True, randaug_layers=2, randaug_magnitude=10, mixup_alpha=0.2),
    "medium1": AugmentSpec(crop=True, flip=True, randaug_layers=2, randaug_magnitude=15, mixup_alpha=0.2),
    "medium2": AugmentSpec(crop=True, flip=True, randaug_layers=2, randaug_magnitude=15, mixup_alpha=0.5),
    "strong1": AugmentSpec(crop=True, flip=True, randaug_layers=2, randaug_magnitude=20, mixup_alpha=0.5),
    "strong2": AugmentSpec(crop=True, flip=True, randaug_layers=2, randaug_magnitude=20, mixup_alpha=0.8),
    # DeiT (Touvron et al. 2021, Table 9): RandAugment m9, Mixup 0.8, CutMix 1.0, random erasing 0.25.
    "deit": AugmentSpec(crop=True, flip=True, randaug_layers=2, randaug_magnitude=9, mixup_alpha=0.8,
                        cutmix_alpha=1.0, cutmix_prob=0.5, erase_prob=0.25),
}

# Inception crop (official ViT / big_vision `inception_crop`): 5%..100% of the area, aspect 3/4..4/3.
CROP_AREA = (0.05, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
# Random erasing (Zhong et al. 2020, as used by DeiT): 2%..1/3 of the area, aspect 0.3..3.3, noise fill.
ERASE_AREA = (0.02, 1.0 / 3.0)
ERASE_RATIO = (0.3, 3.3)

RANDAUG_OPS = (
    "identity", "autocontrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add",
    "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y",
    "cutout",
)
FILL = 128.0  # grey fill for pixels uncovered by geometric ops and cutout


def get_augment(name: str | AugmentSpec) -> AugmentSpec:
    if isinstance(name, AugmentSpec):
        return name
    try:
        return AUGMENT_LEVELS[name]
    except KeyError:
        raise ConfigError(f"augment={name!r} is not a known level; expected one of {sorted(AUGMENT_LEVELS)}") from None


# --------------------------------------------------------------------------------------------------------
# Random numbers for one global batch
# --------------------------------------------------------------------------------------------------------
@dataclass
class Draws:
    """Every random number one batch needs; rows are sample positions in the global batch."""

    crop: np.ndarray        # [G, ATTEMPTS, 4] uniforms: area, log-ratio, x, y
    flip: np.ndarray        # [G] bool
    ra_ops: np.ndarray      # [G, L] op ids
    ra_apply: np.ndarray    # [G, L] bool: the chosen op is applied (probability 1/2)
    ra_sign: np.ndarray     # [G, L] +-1 direction for signed ops
    ra_u: np.ndarray        # [G, L, 2] uniforms used inside an op (cutout position)
    erase_apply: np.ndarray  # [G] bool
    erase: np.ndarray       # [G, ATTEMPTS, 4] uniforms
    sample_seed: np.ndarray  # [G] int64 seeds for per-sample noise
    mix_lam: float          # Beta draw for Mixup (or CutMix)
    use_cutmix: bool
    cut_centre: np.ndarray  # [2] uniforms
    shift: np.ndarray       # [G, 2] uniforms: vertical and horizontal translation

    def rows(self, start: int, stop: int) -> "Draws":
        """The rows of one rank's (or one sample's) slice; batch-level values are shared."""
        return Draws(
            self.crop[start:stop], self.flip[start:stop], self.ra_ops[start:stop], self.ra_apply[start:stop],
            self.ra_sign[start:stop], self.ra_u[start:stop], self.erase_apply[start:stop],
            self.erase[start:stop], self.sample_seed[start:stop], self.mix_lam, self.use_cutmix,
            self.cut_centre, self.shift[start:stop],
        )


def draw(spec: AugmentSpec, seed: int, epoch: int, step: int, global_batch: int, extra: tuple[int, ...] = ()) -> Draws:
    """All random numbers of global batch ``step`` of ``epoch``, from a generator keyed by exactly those
    (plus ``extra`` key parts, e.g. rank and worker for streamed shards)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xA06, epoch, step, *extra])
    g, layers = global_batch, max(spec.randaug_layers, 1)
    crop = rng.random((g, CROP_ATTEMPTS, 4))
    flip = rng.random(g) < 0.5
    ra_ops = rng.integers(0, len(RANDAUG_OPS), (g, layers))
    ra_apply = rng.random((g, layers)) < 0.5
    ra_sign = np.where(rng.random((g, layers)) < 0.5, -1.0, 1.0)
    ra_u = rng.random((g, layers, 2))
    erase_apply = rng.random(g) < spec.erase_prob
    erase = rng.random((g, CROP_ATTEMPTS, 4))
    sample_seed = rng.integers(0, 2**62, g)
    use_cutmix = spec.cutmix_alpha > 0 and (spec.mixup_alpha <= 0 or rng.random() < spec.cutmix_prob)
    alpha = spec.cutmix_alpha if use_cutmix else spec.mixup_alpha
    mix_lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    cut_centre = rng.random(2)
    shift = rng.random((g, 2))  # drawn last: the draws above stay those of earlier releases
    return Draws(crop, flip, ra_ops, ra_apply, ra_sign, ra_u, erase_apply, erase, sample_seed, mix_lam,
                 use_cutmix, cut_centre, shift)


# --------------------------------------------------------------------------------------------------------
# Crop and resize
# --------------------------------------------------------------------------------------------------------
def inception_crop_boxes(widths: np.ndarray, heights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Random resized crop boxes ``[B, 4]`` (x0, y0, x1, y1), one per image, from ``uniforms [B, T, 4]``.

    Tries up to T (area, aspect) proposals and keeps the first that fits; if none does, falls back to the
    largest centred box with an allowed aspect ratio.
    """
    widths = np.asarray(widths, dtype=np.float64)
    heights = np.asarray(heights, dtype=np.float64)
    area = widths * heights
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    target = area[:, None] * (CROP_AREA[0] + (CROP_AREA[1] - CROP_AREA[0]) * uniforms[..., 0])  # [B, T]
    ratio = np.exp(lo + (hi - lo) * uniforms[..., 1])
    w = np.sqrt(target * ratio)
    h = np.sqrt(target / ratio)
    fits = (w <= widths[:, None]) & (h <= heights[:, None])
    first = np.argmax(fits, axis=1)
    any_fit = fits.any(axis=1)
    rows = np.arange(len(widths))
    cw, ch = w[rows, first], h[rows, first]
    # fallback: whole image with its aspect ratio clamped into the allowed range
    in_ratio = widths / heights
    fb_w = np.where(in_ratio > CROP_RATIO[1], heights * CROP_RATIO[1], widths)
    fb_h = np.where(in_ratio < CROP_RATIO[0], widths / CROP_RATIO[0], heights)
    cw = np.where(any_fit, cw, fb_w)
    ch = np.where(any_fit, ch, fb_h)
    ux = np.where(any_fit, uniforms[rows, first, 2], 0.5)
    uy = np.where(any_fit, uniforms[rows, first, 3], 0.5)
    x0 = ux * (widths - cw)
    y0 = uy * (heights - ch)
    return np.stack([x0, y0, x0 + cw, y0 + ch], axis=1)


def resize(x: torch.Tensor, size: tuple[int, int], boxes: np.ndarray | None = None,
           flips: np.ndarray | None = None) -> torch.Tensor:
    """Crop each image to its box (or take it whole), resize to ``size`` and mirror where flagged.

    Returns float ``[B, C, h, w]``. Resampling is separable: one interpolation matrix per image and axis
    (bilinear when enlarging, a triangle filter as wide as the scale when shrinking, i.e. antialiased),
    applied with two batched matrix products. That is several times faster on CPU than
    ``F.interpolate``/``roi_align`` for small images, and a crop or a flip is just a different matrix.
    """
    b, c, height, width = x.shape
    x = x.float()
    if boxes is None and flips is None and (height, width) == tuple(size):
        return x
    if boxes is None:
        boxes = np.tile(np.array([0.0, 0.0, width, height]), (b, 1))
    rows = _interp_matrices(boxes[:, 1], boxes[:, 3], size[0], height, x.device)  # [B, h, H]
    cols = _interp_matrices(boxes[:, 0], boxes[:, 2], size[1], width, x.device)   # [B, w, W]
    if flips is not None and flips.any():
        mask = torch.as_tensor(flips, device=x.device).view(-1, 1, 1)
        cols = torch.where(mask, cols.flip(1), cols)  # [B, w, W]
    if len(rows) == 1 and len(cols) == 1:  # one shared pair of matrices: plain matrix products
        return rows[0] @ x @ cols[0].T
    out = torch.matmul(rows[:, None], x)                     # [B, C, h, W]
    return torch.matmul(out, cols[:, None].transpose(-1, -2))  # [B, C, h, w]


def _interp_matrices(start: np.ndarray, stop: np.ndarray, out: int, length: int, device) -> torch.Tensor:
    """``[B, out, length]`` weights that resample source span [start, stop) onto ``out`` pixels.

    Identical spans (no crop) share one matrix, returned as ``[1, out, length]``.
    """
    if np.all(start == start[0]) and np.all(stop == stop[0]):
        start, stop = start[:1], stop[:1]
    start = torch.as_tensor(start, dtype=torch.float32).view(-1, 1, 1)
    stop = torch.as_tensor(stop, dtype=torch.float32).view(-1, 1, 1)
    scale = (stop - start) / out
    # source coordinate of each output pixel centre; clamped so enlarging repeats the edge (as F.interpolate)
    centre = (start + (torch.arange(out, dtype=torch.float32).view(1, -1, 1) + 0.5) * scale - 0.5)
    centre = centre.clamp(0, length - 1)
    source = torch.arange(length, dtype=torch.float32).view(1, 1, -1)
    weights = (source - centre).abs_().div_(scale.clamp(min=1.0)).neg_().add_(1.0).clamp_(min=0.0)
    return weights.div_(weights.sum(-1, keepdim=True)).to(device)


def translate(x: torch.Tensor, uniforms: np.ndarray, max_shift: int) -> torch.Tensor:
    """Move each image by whole pixels, up to ``max_shift`` in each direction, filling with black (pixel 0).

    The same as padding by ``max_shift`` and taking a random crop of the original size; ``uniforms`` is
    ``[B, 2]`` in [0, 1) and picks the vertical and horizontal offsets. Whole pixels keep the pixels exact.
    """
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    offsets = torch.as_tensor(np.floor(uniforms * (2 * max_shift + 1)).astype(np.int64), device=x.device)
    padded = F.pad(x, (max_shift,) * 4)  # [B, C, H + 2s, W + 2s], zeros outside
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    moved = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return moved.permute(0, 3, 1, 2)


def flip(x: torch.Tensor, flags: np.ndarray) -> torch.Tensor:
    """Mirror the images whose flag is set."""
    if not flags.any():
        return x
    mask = torch.as_tensor(flags, device=x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def adapt_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Grey to RGB by repetition, RGB to grey by ITU-R 601 luma; anything else is a shape error."""
    have = x.shape[1]
    if have == in_chans:
        return x
    if have == 1 and in_chans == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and in_chans == 1:
        return _luma(x)
    raise ShapeError(f"cannot turn {have}-channel images into in_chans={in_chans}; expected 1 or 3")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Pixels 0..255 to [-1, 1], the paper's input range."""
    return x.mul(1.0 / 127.5).sub_(1.0)


def eval_preprocessing(img_size: int | tuple[int, int], in_chans: int, channels: int | None = None) -> dict:
    """How evaluation turns an image file into the model's input, as data that a checkpoint carries.

    Decode to ``channels`` (1: grey, 3: RGB), resize the whole image to ``img_size`` (bilinear, antialiased when
    shrinking), scale pixels to [0, 1], subtract ``mean`` and divide by ``std`` (0.5 and 0.5: :func:`normalize`'s
    [-1, 1]), then repeat grey to RGB or take the luma of RGB to reach ``in_chans`` (:func:`adapt_channels`).
    """
    size = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(v) for v in img_size)
    return {"img_size": list(size), "resize": "bilinear", "mean": [0.5] * in_chans, "std": [0.5] * in_chans,
            "channels": int(channels or in_chans), "in_chans": int(in_chans)}


# --------------------------------------------------------------------------------------------------------
# RandAugment on batches
# --------------------------------------------------------------------------------------------------------
def rand_augment(x: torch.Tensor, draws: Draws, layers: int, magnitude: float) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020): ``layers`` random ops per image, each applied with probability 1/2.

    ``x`` holds pixel values 0..255 (float). Each op runs once per layer on the sub-batch that chose it,
    with per-image directions; magnitude ``m`` maps to strength ``m / 10`` (rotate 30 deg, shear 0.3,
    translate 45% of the size, enhance factors 1 +- 0.9 at m = 10; larger m extrapolates, as AugReg's
    m = 15, 20 levels do). Unlike TF's version, m = 0 leaves the magnitude-driven ops as identity.
    """
    if layers <= 0:
        return x
    frac = magnitude / 10.0
    for layer in range(layers):
        ops = draws.ra_ops[:, layer]
        active = draws.ra_apply[:, layer]
        out = x.clone()
        geometric = active & np.isin(ops, _GEOMETRIC_IDS)
        if geometric.any():  # all warps of this layer in one grid_sample
            rows = np.nonzero(geometric)[0]
            sign = torch.as_tensor(draws.ra_sign[rows, layer], dtype=x.dtype, device=x.device)
            matrices = _matrices(len(rows), x)
            for op_id in np.unique(ops[rows]):
                pick = torch.as_tensor(np.nonzero(ops[rows] == op_id)[0], device=x.device)
                _GEOMETRIC[RANDAUG_OPS[op_id]](matrices, pick, frac, sign[pick], x.shape[-2:])
            index = torch.as_tensor(rows, device=x.device)
            out.index_copy_(0, index, _affine(x.index_select(0, index), matrices))
        for op_id in np.unique(ops[active & ~geometric]):
            rows = np.nonzero(active & (ops == op_id))[0]
            index = torch.as_tensor(rows, device=x.device)
            sign = torch.as_tensor(draws.ra_sign[rows, layer], dtype=x.dtype, device=x.device)
            result = _OP_FUNCS[RANDAUG_OPS[op_id]](x.index_select(0, index), frac, sign, draws.ra_u[rows, layer])
            out.index_copy_(0, index, result)
        x = out
    return x


def _luma(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 255)


def _factor(frac: float, sign: torch.Tensor) -> torch.Tensor:
    return (1.0 + sign * 0.9 * frac).clamp(min=0.0)


def _identity(x, frac, sign, u):
    return x


def _autocontrast(x, frac, sign, u):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    stretched = (x - lo) * (255.0 / span.clamp(min=1e-6))
    return torch.where(span > 0, stretched, x)


def _equalize(x, frac, sign, u):
    b, c, h, w = x.shape
    values = x.round().clamp(0, 255).long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.float32, device=x.device)
    hist.scatter_add_(1, values, torch.ones_like(values, dtype=torch.float32))
    cdf = hist.cumsum(dim=1)
    cdf_min = cdf.masked_fill(hist == 0, float("inf")).amin(dim=1, keepdim=True)
    total = float(h * w)
    lut = ((cdf - cdf_min) / (total - cdf_min).clamp(min=1.0) * 255.0).round().clamp(0, 255)
    flat = (total - cdf_min) <= 0  # a single grey level: leave it
    out = torch.where(flat, values.float(), lut.gather(1, values))
    return out.view(b, c, h, w).to(x.dtype)


def _invert(x, frac, sign, u):
    return 255.0 - x


def _posterize(x, frac, sign, u):
    bits = int(min(max(8 - round(4 * frac), 1), 8))
    shift = 8 - bits
    if shift == 0:
        return x
    return ((x.round().clamp(0, 255).int() >> shift) << shift).to(x.dtype)


def _solarize(x, frac, sign, u):
    threshold = min(max(256.0 - 256.0 * frac, 0.0), 256.0)
    return torch.where(x >= threshold, 255.0 - x, x)


def _solarize_add(x, frac, sign, u):
    return torch.where(x < 128, (x + 110.0 * frac).clamp(max=255.0), x)


def _color(x, frac, sign, u):
    if x.shape[1] == 1:
        return x
    return _blend(x, _luma(x).expand_as(x), _factor(frac, sign))


def _contrast(x, frac, sign, u):
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean.expand_as(x), _factor(frac, sign))


def _brightness(x, frac, sign, u):
    return _blend(x, torch.zeros_like(x), _factor(frac, sign))


def _sharpness(x, frac, sign, u):
    c = x.shape[1]
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13.0
    smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
    blurred = x.clone()
    blurred[:, :, 1:-1, 1:-1] = smooth  # PIL keeps the one-pixel border unfiltered
    return _blend(x, blurred, _factor(frac, sign))


def _affine(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Warp with per-image 2x3 pixel-space matrices (output -> input, about the centre); grey fill."""
    b, _, h, w = x.shape
    scale = torch.tensor([w / 2.0, h / 2.0], dtype=x.dtype, device=x.device)
    theta = matrices.clone()
    theta[:, :, :2] = matrices[:, :, :2] * scale.view(1, 1, 2) / scale.view(1, 2, 1)
    theta[:, :, 2] = matrices[:, :, 2] / scale
    grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
    return F.grid_sample(x - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL


def _matrices(n: int, x: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    m[:, 0, 0] = 1.0
    m[:, 1, 1] = 1.0
    return m


def _rotate_m(m, pick, frac, sign, hw):
    angle = sign * math.radians(30.0 * frac)
    m[pick, 0, 0], m[pick, 0, 1] = torch.cos(angle), -torch.sin(angle)
    m[pick, 1, 0], m[pick, 1, 1] = torch.sin(angle), torch.cos(angle)


def _shear_x_m(m, pick, frac, sign, hw):
    m[pick, 0, 1] = sign * 0.3 * frac


def _shear_y_m(m, pick, frac, sign, hw):
    m[pick, 1, 0] = sign * 0.3 * frac


def _translate_x_m(m, pick, frac, sign, hw):
    m[pick, 0, 2] = -sign * 0.45 * frac * hw[1]


def _translate_y_m(m, pick, frac, sign, hw):
    m[pick, 1, 2] = -sign * 0.45 * frac * hw[0]


_GEOMETRIC = {"rotate": _rotate_m, "shear_x": _shear_x_m, "shear_y": _shear_y_m, "translate_x": _translate_x_m,
              "translate_y": _translate_y_m}
_GEOMETRIC_IDS = np.array([RANDAUG_OPS.index(name) for name in _GEOMETRIC])


def _warp_op(name):
    def op(x, frac, sign, u):
        m = _matrices(len(x), x)
        _GEOMETRIC[name](m, torch.arange(len(x)), frac, sign, x.shape[-2:])
        return _affine(x, m)
    return op


def _cutout(x, frac, sign, u):
    b, _, h, w = x.shape
    half = int(round(0.2 * min(frac, 2.5) * min(h, w)))
    if half <= 0:
        return x
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    cy = torch.as_tensor((u[:, 0] * h).astype(np.int64), device=x.device).view(b, 1, 1)
    cx = torch.as_tensor((u[:, 1] * w).astype(np.int64), device=x.device).view(b, 1, 1)
    inside = ((ys - cy).abs() < half) & ((xs - cx).abs() < half)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, FILL), x)


_OP_FUNCS = {
    "identity": _identity, "autocontrast": _autocontrast, "equalize": _equalize, "invert": _invert,
    "rotate": _warp_op("rotate"), "posterize": _posterize, "solarize": _solarize, "solarize_add": _solarize_add,
    "color": _color, "contrast": _contrast, "brightness": _brightness, "sharpness": _sharpness,
    "shear_x": _warp_op("shear_x"), "shear_y": _warp_op("shear_y"), "translate_x": _warp_op("translate_x"),
    "translate_y": _warp_op("translate_y"),
    "cutout": _cutout,
}
assert set(_OP_FUNCS) == set(RANDAUG_OPS)


# --------------------------------------------------------------------------------------------------------
# Mixing and erasing (after normalisation)
# --------------------------------------------------------------------------------------------------------
def mix(x: torch.Tensor, y: torch.Tensor, num_classes: int, draws: Draws, spec: AugmentSpec):
    """Mixup or CutMix with the batch reversed as partner; returns (images, soft targets ``[B, K]``)."""
    target = F.one_hot(y, num_classes).to(x.dtype)
    lam = draws.mix_lam
    if draws.use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(draws.cut_centre[0] * h), int(draws.cut_centre[1] * w)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = lam * x + (1.0 - lam) * x.flip(0)
    return x, lam * target + (1.0 - lam) * target.flip(0)


def random_erase(x: torch.Tensor, draws: Draws) -> torch.Tensor:
    """Replace a random rectangle of some images by unit Gaussian noise (in normalised pixel space)."""
    if not draws.erase_apply.any():
        return x
    b, c, h, w = x.shape
    x = x.clone()
    lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    for i in np.nonzero(draws.erase_apply)[0]:
        for u in draws.erase[i]:
            area = h * w * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[0])
            aspect = math.exp(lo + (hi - lo) * u[1])
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                top, left = int(u[2] * (h - eh + 1)), int(u[3] * (w - ew + 1))
                gen = torch.Generator().manual_seed(int(draws.sample_seed[i]))
                noise = torch.randn((c, eh, ew), generator=gen, dtype=x.dtype)
                x[i, :, top:top + eh, left:left + ew] = noise.to(x.device)
                break
    return x
