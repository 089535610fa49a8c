"""Hybrid ResNet + ViT (Section 3.1): official counts and numerics, parity with timm, the official .npz layout.

What the references say and we check: the official R50+ViT-B/16 has 98,659,112 parameters at 224 px and 1000
classes; timm's ``vit_base_r50_s16_384`` (a port of the official hybrid) converted with ``from_timm`` has exactly
timm's parameter count and logits; an .npz written by ``save_npz`` is read by timm's loader of the official ViT
checkpoints (``timm.models.vision_transformer._load_weights``) into the same function.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import vitlab
from vitlab.errors import ConfigError, ShapeError
from vitlab.models.hybrid import NUMERICS, HybridEmbed
from vitlab.models.resnet import StdConv2d, same_padding

timm = pytest.importorskip("timm")

LOGIT_SIZE = 128  # logits are compared at 128 px: the 384-px R50+ViT-B/16 is slow on small CPUs


def rel_err(reference: torch.Tensor, other: torch.Tensor) -> float:
    return ((reference.double() - other.double()).norm() / reference.double().norm()).item()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_hybrid(**overrides) -> torch.nn.Module:
    fields = dict(num_classes=3, img_size=64, width=64, depth=1, num_heads=2, mlp_dim=128)
    fields.update(hybrid_layers=(1, 1, 1), hybrid_width=32)
    fields.update(overrides)
    return vitlab.create_model("r50_vit_b16", **fields).eval()


def jitter_(model: torch.nn.Module, scale: float, max_numel: int | None = None) -> None:
    """Add noise so that zero- or constant-initialised tensors (GroupNorm scales, biases, the head) matter.

    ``max_numel`` spares the large, already random matrices (noise on 98M values is slow on small CPUs).
    """
    with torch.no_grad():
        for param in model.parameters():
            if max_numel is None or param.numel() <= max_numel or param.std() == 0:
                param.add_(torch.randn_like(param) * scale)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """timm vit_base_r50_s16_384 (random, jittered so zero-init parts matter), ours from ``from_timm``, and a copy of
    the timm model whose weights were wiped and then read back by timm's official-checkpoint loader from our .npz.

    What must be seen at 384 px is recorded first (parameter counts, tensors); then the models move to LOGIT_SIZE
    for the logits (the 384-px model is slow on small CPUs). timm resizes its position table bicubically and the
    official code bilinearly, so our model takes timm's resized table; the resize itself is tested with the
    position embeddings.
    """
    from timm.models.vision_transformer import _load_weights

    from vitlab.interop.official import save_npz
    from vitlab.interop.timm import from_timm

    torch.manual_seed(0)
    theirs = timm.create_model("vit_base_r50_s16_384", pretrained=False, num_classes=10).eval()
    jitter_(theirs, 0.02, max_numel=1_000_000)
    ours = from_timm(theirs).eval()
    path = tmp_path_factory.mktemp("hybrid") / "r50_vit_b16.npz"
    save_npz(ours, path)
    reader = copy.deepcopy(theirs)
    with torch.no_grad():
        for param in reader.parameters():
            param.zero_()
    _load_weights(reader, str(path))
    expected = theirs.state_dict()
    record = dict(
        theirs=theirs,
        ours=ours,
        reader=reader,
        npz_keys=set(np.load(path).files),
        params=(n_params(theirs), n_params(ours)),
        ours_equal=[torch.equal(ours.state_dict()[_ours_key(k)], v) for k, v in expected.items()],
        reader_differs=sorted(k for k, v in reader.state_dict().items() if not torch.equal(v, expected[k])),
    )
    for model in (theirs, reader):
        model.set_input_size(img_size=LOGIT_SIZE)
    ours.set_input_size(LOGIT_SIZE)
    with torch.no_grad():
        ours.pos_embed.weight.copy_(theirs.pos_embed)
    return record


def _ours_key(timm_key: str) -> str:
    from vitlab.interop.timm_resnet import _hybrid_key

    return "pos_embed.weight" if timm_key == "pos_embed" else _hybrid_key(timm_key)


def test_from_timm_same_parameter_count_weights_and_logits(converted):
    theirs, ours = converted["theirs"], converted["ours"]
    assert converted["params"] == (98_189_642, 98_189_642)
    assert ours.config.hybrid_layers == (3, 4, 9) and ours.config.patch_size == 1
    assert ours.config.ws_style == "timm" and ours.config.ws_eps == 1e-8
    assert all(converted["ours_equal"])
    images = torch.randn(1, 3, LOGIT_SIZE, LOGIT_SIZE)
    with torch.no_grad():
        reference, got = theirs(images), ours(images)
    assert reference.abs().max() > 0.1
    assert rel_err(reference, got) < 1e-5


def test_save_npz_is_read_by_timms_official_vit_loader(converted):
    expected = {"conv_root/kernel", "gn_root/scale", "block3/unit9/gn3/scale", "block1/unit1/conv_proj/kernel"}
    assert expected <= converted["npz_keys"]
    assert converted["reader_differs"] == []  # every tensor came back from our file, bit for bit
    images = torch.randn(1, 3, LOGIT_SIZE, LOGIT_SIZE)
    with torch.no_grad():
        assert rel_err(converted["reader"](images), converted["ours"](images)) < 1e-5


# -- official counts and names ---------------------------------------------------------------------------------------
def test_official_parameter_count_r50_vit_b16():
    with torch.device("meta"):
        model = vitlab.create_model("R50+ViT-B/16")
    assert n_params(model) == 98_659_112  # official vit_jax models_test.py, 224 px, 1000 classes
    assert model.config.hybrid_layers == (3, 4, 9) and model.config.grid_size == (14, 14)


def test_r50_vit_l32_is_created_on_meta():
    with torch.device("meta"):
        model = vitlab.create_model("R50+ViT-L/32")
    assert model.config.hybrid_layers == (3, 4, 6, 3) and model.config.grid_size == (7, 7)
    assert n_params(model) == 328_994_856  # timm's vit_large_r50_s32_224 at 1000 classes
    for name in ("r50_vit_b32", "r50_vit_l16"):
        assert name in vitlab.list_models()
        with torch.device("meta"):
            vitlab.create_model(name)


def test_stem_alone_hybrid_cuts_patches_from_the_stride_4_map(tmp_path):
    """``hybrid_layers=()``: the official ``resnet.num_layers=()`` (its R+Ti/16), the ResNet root and no stages."""
    from vitlab.interop.official import load_npz_any, save_npz

    model = tiny_hybrid(hybrid_layers=(), patch_size=2, img_size=32, in_chans=1)
    assert model.config.is_hybrid and model.config.total_stem_stride == 4 and model.config.grid_size == (4, 4)
    assert len(model.patch_embed.stages) == 0 and model.patch_embed.proj.in_channels == 32
    assert model.patch_embed.grid_size((48, 48)) == (6, 6)
    stem = 7 * 7 * 32 + 2 * 32  # 7x7 conv without bias from 1 channel, GroupNorm scale and bias
    plain = vitlab.create_model("vit_ti2", num_classes=3, img_size=8, in_chans=32, width=64, depth=1, num_heads=2,
                                mlp_dim=128)  # the same ViT on the stem's 8x8x32 map
    assert n_params(model) == stem + n_params(plain)
    jitter_(model, 0.05)
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        features = model.patch_embed.forward_features(images)
        assert features.shape == (2, 32, 8, 8)
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("patch_embed.stem")})
        assert torch.allclose(plain(features), model(images), atol=1e-6)  # stem, then an ordinary ViT
    path = tmp_path / "r_ti.npz"
    save_npz(model, path)
    rebuilt = load_npz_any(path)
    assert rebuilt.config.hybrid_layers == () and rebuilt.config.img_size == (32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))
    with pytest.raises(ConfigError, match="hybrid_layers"):
        tiny_hybrid(hybrid_layers=(2, 0))
    with pytest.raises(ShapeError, match="ResNet stride x patch"):
        tiny_hybrid(hybrid_layers=(), patch_size=3, img_size=32)


def test_from_timm_stem_alone_hybrid_same_logits():
    """timm's R+ViT-Ti (``vit_tiny_r_s16_p8``): its backbone is the ResNet root alone, a conv-norm-pool Sequential."""
    timm = pytest.importorskip("timm")
    from vitlab.interop.timm import from_timm

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=64, depth=2).eval()
    jitter_(reference, 0.05)
    ours = from_timm(reference).eval()
    assert ours.config.hybrid_layers == () and ours.config.hybrid_width == 64 and ours.config.patch_size == 8
    assert n_params(ours) == n_params(reference)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(reference(images), ours(images)) < 1e-5


def test_gmacs_are_counted():
    from vitlab.models.flops import count_macs

    hybrid, plain = count_macs("r50_vit_b16"), count_macs("vit_b16")
    assert 3e9 < hybrid - plain < 5e9  # the R50 stem's three stages cost ~4 GMACs at 224 px


# -- official numerics -----------------------------------------------------------------------------------------------
def test_default_numerics_are_the_official_ones():
    model = tiny_hybrid()
    assert model.config.ws_style == "official" and model.config.ws_eps == 1e-5
    convs = [m for m in model.modules() if isinstance(m, StdConv2d)]
    norms = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert convs and all(c.style == "std" and c.eps == 1e-5 and c.same for c in convs)
    assert norms and all(n.eps == 1e-6 and n.num_groups == 32 for n in norms)  # flax.linen.GroupNorm's default eps
    for stage in model.patch_embed.stages:
        for unit in stage:
            assert torch.count_nonzero(unit.norm3.weight) == 0  # official: last GroupNorm scale starts at zero


def test_numerics_option_changes_the_function():
    torch.manual_seed(0)
    official = tiny_hybrid()
    jitter_(official, 0.05)
    timm_style = tiny_hybrid(ws_style="timm", ws_eps=1e-8)
    timm_style.load_state_dict(official.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(official(images), timm_style(images)) > 1e-6
    assert NUMERICS["timm"].gn_eps == 1e-5 and NUMERICS["official"].gn_eps == 1e-6
    with pytest.raises(ConfigError, match="ws_style"):
        tiny_hybrid(ws_style="jax")


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [(224, 7, 2, (2, 3)), (112, 3, 2, (0, 1)), (113, 3, 2, (1, 1)), (56, 1, 2, (0, 0)), (56, 3, 1, (1, 1))],
)
def test_same_padding_is_tensorflows(size, kernel, stride, expected):
    # TensorFlow SAME: output ceil(size / stride); total pad split with the extra pixel after.
    assert same_padding(size, kernel, stride) == expected


def test_strided_same_conv_matches_explicit_padding():
    conv = StdConv2d(2, 3, 3, 2, padding="same", style="std", eps=1e-5)
    x = torch.randn(1, 2, 8, 8)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))  # TF pads (0, 1) for k=3, s=2 on an even size
    with torch.no_grad():
        w = conv.weight.double().numpy()
        w = (w - w.mean(axis=(1, 2, 3), keepdims=True)) / (w.std(axis=(1, 2, 3), keepdims=True) + 1e-5)
        expected = torch.nn.functional.conv2d(padded, torch.from_numpy(w).float(), stride=2)
        assert torch.allclose(conv(x), expected, atol=1e-5)
    assert conv(x).shape == (1, 3, 4, 4)


# -- resolution and checkpoints --------------------------------------------------------------------------------------
def test_higher_resolution_resizes_position_embeddings():
    model = tiny_hybrid()
    assert isinstance(model.patch_embed, HybridEmbed)
    assert model.patch_embed.grid_size((64, 64)) == (4, 4) and model.pos_embed.weight.shape == (1, 17, 64)
    model.set_input_size(128)
    assert model.patch_embed.grid_size((128, 128)) == (8, 8)
    assert model.pos_embed.weight.shape == (1, 65, 64)
    assert model(torch.randn(1, 3, 128, 128)).shape == (1, 3)


def test_official_npz_round_trip_and_finetune_at_higher_resolution(tmp_path):
    from vitlab.interop.official import load_npz, load_npz_any, save_npz
    from vitlab.models.posemb import resize_pos_embed
    from vitlab.weights import resolve

    torch.manual_seed(0)
    model = tiny_hybrid()
    jitter_(model, 0.05)
    path = tmp_path / "tiny_hybrid.npz"
    save_npz(model, path)
    rebuilt = load_npz_any(path)
    assert rebuilt.config.hybrid_layers == (1, 1, 1) and rebuilt.config.hybrid_width == 32
    assert rebuilt.config.in_chans == 3 and rebuilt.config.img_size == (64, 64)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))
    bigger = tiny_hybrid(img_size=128)
    load_npz(bigger, path)
    expected = resize_pos_embed(model.pos_embed.weight.detach(), (8, 8), num_prefix_tokens=1)
    assert torch.allclose(bigger.pos_embed.weight, expected)
    tuned = resolve(path).build(num_classes=5, img_size=128)
    assert tuned.config.hybrid_layers == (1, 1, 1) and tuned.pos_embed.weight.shape == (1, 65, 64)
    assert torch.equal(tuned.patch_embed.stem.conv.weight, model.patch_embed.stem.conv.weight)
    assert tuned(torch.randn(1, 3, 128, 128)).shape == (1, 5)
