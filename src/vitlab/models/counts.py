"""Parameters and MACs of a named model from its config alone: no torch, nothing built, nothing traced.

`vitlab models` prints some 45 rows; building and tracing each (:mod:`vitlab.models.flops`) made the table take
seconds per row and importing torch alone takes seconds, so the table is computed from these formulas instead.
They count what :class:`torch.utils.flop_counter.FlopCounterMode` counts (convolutions, matrix products and the
attention products QK^T and AV; not norms or activations) and a test checks them against the traced counts of
every family (ViT, hybrid, BiT). This module also owns the hybrid's token stride, which the models import.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from vitlab.models.names import model_spec


def hybrid_stride(hybrid_layers: Optional[Sequence[int]]) -> int:
    """Stride of a hybrid's ResNet: 4 from the root (conv and max-pool), x2 for each stage after the first; 1 for a
    plain ViT (``None``: the patches are cut from the pixels)."""
    if hybrid_layers is None:
        return 1
    return 4 * 2 ** max(len(hybrid_layers) - 1, 0)


def _conv(h: int, w: int, kernel: int, stride: int, pad: int | None) -> tuple[int, int]:
    """Output size of a conv / pool; ``pad=None`` is TensorFlow SAME (ceil(size / stride))."""
    if pad is None:
        return -(-h // stride), -(-w // stride)
    return (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1


def _vit_counts(f: dict[str, Any]) -> tuple[int, int]:
    width, depth, mlp, classes = f["width"], f["depth"], f["mlp_dim"], f["num_classes"]
    h, w = f["img_size"]
    params = macs = 0
    if f.get("hybrid_layers") is not None:  # the official ResNet of the hybrid: SAME convs, GroupNorm after each
        chans, stem = f["in_chans"], f.get("hybrid_width", 64)
        h, w = _conv(h, w, 7, 2, None)
        params += 49 * chans * stem + 2 * stem
        macs += h * w * 49 * chans * stem
        h, w = _conv(h, w, 3, 2, None)  # max-pool
        cin = stem
        for index, units in enumerate(f["hybrid_layers"]):
            mid = stem * 2**index
            for unit in range(units):
                stride = 2 if index and unit == 0 else 1
                oh, ow = _conv(h, w, 3, stride, None)
                params += cin * mid + 9 * mid * mid + mid * 4 * mid + 2 * (mid + mid + 4 * mid)
                macs += h * w * cin * mid + oh * ow * (9 * mid * mid + mid * 4 * mid)
                if stride != 1 or cin != 4 * mid:
                    params += cin * 4 * mid + 2 * 4 * mid
                    macs += oh * ow * cin * 4 * mid
                cin, h, w = 4 * mid, oh, ow
        embed_in = cin
    else:
        embed_in = f["in_chans"]
    patch = f["patch_size"]
    tokens = (h // patch) * (w // patch)
    params += patch * patch * embed_in * width + width
    macs += tokens * patch * patch * embed_in * width
    prefix = 1 if f.get("classifier", "token") == "token" else 0
    params += prefix * width
    if f.get("posemb", "learned") != "learned":
        raise NotImplementedError(f"no analytic count for posemb={f['posemb']!r}")
    params += (tokens + prefix) * width
    seq = tokens + prefix
    qkv_bias = 3 * width if f.get("qkv_bias", True) else 0
    block = 4 * width + 3 * width * width + qkv_bias + width * width + width + 2 * width * mlp + mlp + width
    params += depth * block + 2 * width
    macs += depth * (seq * (4 * width * width + 2 * width * mlp) + 2 * seq * seq * width)
    features = width
    if f.get("representation_size"):
        params += width * f["representation_size"] + f["representation_size"]
        macs += width * f["representation_size"]
        features = f["representation_size"]
    if classes:
        params += features * classes + classes
        macs += features * classes
    if f.get("mpp_classes"):
        params += width + width * f["mpp_classes"] + f["mpp_classes"]
    return params, macs


def _bit_counts(f: dict[str, Any]) -> tuple[int, int]:
    h, w = f["img_size"]
    factor = f.get("width_factor", 1)
    stem, chans = f.get("stem_width", 64) * factor, f["in_chans"]
    h, w = _conv(h, w, 7, 2, 3)
    params, macs = 49 * chans * stem, h * w * 49 * chans * stem
    h, w = _conv(h, w, 3, 2, 1)  # zero pad 1, 3x3/2 max-pool
    cin = stem
    for index, units in enumerate(f["layers"]):
        out = 256 * 2**index * factor
        mid = out // 4
        for unit in range(units):
            stride = 2 if index and unit == 0 else 1
            oh, ow = _conv(h, w, 3, stride, 1)
            params += 2 * cin + cin * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * out
            macs += h * w * cin * mid + oh * ow * (9 * mid * mid + mid * out)
            if stride != 1 or cin != out:
                sh, sw = _conv(h, w, 1, stride, 0)
                params += cin * out
                macs += sh * sw * cin * out
            cin, h, w = out, oh, ow
    params += 2 * cin
    classes = f["num_classes"]
    if classes:
        params += cin * classes + classes
        macs += cin * classes
    return params, macs


def analytic_counts(name: str, img_size: int = 224, num_classes: int = 1000, in_chans: int = 3,
                    **overrides: Any) -> tuple[int, int]:
    """``(parameters, MACs per image)`` of a named model from its config alone, without building it.

    Raises NotImplementedError for options the formulas do not cover (then use :func:`count_params` and
    :func:`count_macs`, which build and trace the model).
    """
    family, fields = model_spec(name)
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    fields = {**fields, "img_size": size, "num_classes": num_classes, "in_chans": in_chans, **overrides}
    if family == "vit":
        return _vit_counts(fields)
    if family == "bit":
        return _bit_counts(fields)
    raise NotImplementedError(f"no analytic count for family {family!r}")
