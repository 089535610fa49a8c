"""BiT ResNet-v2: the model face, the named variants, and parity with timm and the official .npz layout.

What the references say and we check: timm's ``resnetv2_*_bit`` models (ported from the official BiT code) have
exactly our parameter counts and, converted, our logits; an .npz written by our ``save_npz`` is read by timm's
loader of the official BiT checkpoints (``timm.models.resnetv2._load_weights``) into the same function.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitlab
from vitlab.errors import ConfigError, ShapeError
from vitlab.models.resnet import BiTConfig, ResNetV2, StdConv2d, standardize_weight

timm = pytest.importorskip("timm")


def rel_err(reference: torch.Tensor, other: torch.Tensor) -> float:
    return ((reference.double() - other.double()).norm() / reference.double().norm()).item()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(**overrides) -> ResNetV2:
    fields = dict(layers=(1, 1), num_classes=5)
    fields.update(overrides)
    return ResNetV2(BiTConfig(**fields)).eval()


@pytest.fixture(scope="module")
def timm_bit():
    """timm resnetv2_50x1_bit with random weights, jittered so that every parameter (head included) matters."""
    torch.manual_seed(0)
    model = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.fixture(scope="module")
def converted(timm_bit):
    from vitlab.interop.timm import from_timm

    return from_timm(timm_bit).eval()


# -- parity with timm ------------------------------------------------------------------------------------------------
def test_from_timm_same_parameter_count_and_logits(timm_bit, converted):
    assert isinstance(converted, ResNetV2)
    assert n_params(converted) == n_params(timm_bit) == 23_520_842
    assert converted.config.ws_eps == 1e-8  # built with timm's numerics, not the official 1e-10
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference, ours = timm_bit(images), converted(images)
    assert reference.abs().max() > 0.1  # the jittered head makes the logits non-trivial
    assert rel_err(reference, ours) < 1e-5
    # In float64 the two are the same function up to rounding: any structural difference would show here.
    with torch.no_grad():
        reference64 = timm_bit.double()(images.double())
        ours64 = converted.double()(images.double())
    timm_bit.float(), converted.float()
    assert rel_err(reference64, ours64) < 1e-12


def test_save_npz_is_read_by_timms_official_bit_loader(converted, tmp_path):
    from timm.models.resnetv2 import _load_weights

    from vitlab.interop.official import save_npz

    path = tmp_path / "bit.npz"
    save_npz(converted, path)
    keys = set(np.load(path).files)
    assert "resnet/root_block/standardized_conv2d/kernel" in keys
    assert "resnet/block1/unit01/a/proj/standardized_conv2d/kernel" in keys
    assert np.load(path)["resnet/head/conv2d/kernel"].shape == (1, 1, 2048, 10)
    reader = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10).eval()
    _load_weights(reader, str(path))
    images = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert rel_err(reader(images), converted(images)) < 1e-5


@pytest.fixture()
def tiny_npz(tmp_path):
    """A small BiT with jittered weights, written in the official layout."""
    from vitlab.interop.official import save_npz

    torch.manual_seed(1)
    model = tiny(layers=(2, 1), num_classes=4)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    path = tmp_path / "tiny_bit.npz"
    save_npz(model, path)
    return model, path


def test_npz_round_trip_rebuilds_the_architecture(tiny_npz):
    from vitlab.interop.official import load_npz, load_npz_any

    model, path = tiny_npz
    assert "resnet/block1/unit02/c/group_norm/gamma" in np.load(path).files
    rebuilt = load_npz_any(path)
    assert rebuilt.config.layers == (2, 1) and rebuilt.config.width_factor == 1
    assert rebuilt.config.num_classes == 4
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    fresh = tiny(layers=(2, 1), num_classes=4)
    load_npz(fresh, path)
    images = torch.randn(1, 3, 40, 40)
    assert torch.equal(fresh(images), model(images))


def test_transfer_build_from_official_npz(tiny_npz):
    from vitlab.weights import resolve

    model, path = tiny_npz
    tuned = resolve(path).build(num_classes=3, img_size=128)
    assert tuned.config.num_classes == 3 and tuned.config.img_size == (128, 128)
    assert torch.count_nonzero(tuned.head.weight) == 0
    assert torch.equal(tuned.stages[1][0].conv2.weight, model.stages[1][0].conv2.weight)


# -- named variants --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, timm_name",
    [
        ("bit_r50x1", "resnetv2_50x1_bit"),
        ("bit_r50x3", "resnetv2_50x3_bit"),
        ("bit_r101x1", "resnetv2_101x1_bit"),
        ("bit_r101x3", "resnetv2_101x3_bit"),
        ("bit_r152x2", "resnetv2_152x2_bit"),
        ("BiT-R152x4", "resnetv2_152x4_bit"),
    ],
)
def test_parameter_counts_match_timm_on_meta(name, timm_name):
    with torch.device("meta"):
        ours = vitlab.create_model(name)
        theirs = timm.create_model(timm_name, pretrained=False)
    assert n_params(ours) == n_params(theirs)


def test_big_variants_are_created_on_meta():
    # Counts of the official BiT models at 1000 classes (the same as timm's ports).
    expected = {"BiT-R152x4": 936_533_224, "bit_r101x3": 387_934_888, "ResNet152x4": 936_533_224}
    for name, count in expected.items():
        with torch.device("meta"):
            model = vitlab.create_model(name)
        assert isinstance(model, ResNetV2)
        assert n_params(model) == count, name
    with torch.device("meta"):
        model = vitlab.create_model("bit_r200x3")
    assert model.config.layers == (3, 24, 36, 3) and model.config.width_factor == 3


def test_registry_names_and_aliases():
    names = vitlab.list_models()
    for name in ("bit_r50x1", "bit_r50x3", "bit_r101x1", "bit_r101x3", "bit_r152x2", "bit_r152x4", "bit_r200x3"):
        assert name in names
    from vitlab.models.registry import model_spec

    assert model_spec("BiT-R152x4") == model_spec("ResNet152x4") == model_spec("bit_r152x4")


def test_gmacs_are_counted():
    from vitlab.models.flops import count_macs

    r50 = count_macs("bit_r50x1") / 1e9
    assert 4.0 < r50 < 4.2  # the convolutions of ResNet-50 at 224 px: ~4.1 GMACs
    assert count_macs("bit_r50x1", img_size=448) == pytest.approx(4 * r50 * 1e9, rel=0.01)


# -- the model face --------------------------------------------------------------------------------------------------
def test_any_input_size_and_channels():
    model = tiny(in_chans=1)
    features = model.forward_features(torch.randn(2, 1, 37, 50))
    assert features.shape == (2, 512, 5, 7)  # stride 8 for two stages, SAME-like ceil from the padded stem
    assert (features >= 0).all()  # after the head's GroupNorm -> ReLU
    assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    assert model(torch.randn(1, 1, 224, 224)).shape == (1, 5)
    with pytest.raises(ShapeError, match="1 input channels"):
        model(torch.randn(1, 3, 64, 64))


def test_head_is_zero_initialised_and_reset():
    model = tiny()
    assert torch.count_nonzero(model(torch.randn(2, 3, 32, 32))) == 0
    model.reset_classifier(7)
    assert model.config.num_classes == 7 and model.head.out_features == 7
    assert torch.count_nonzero(model.head.weight) == 0
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 512)  # no head: the pooled representation


def test_intermediates_and_weight_decay_groups():
    model = tiny()
    out = model.forward_intermediates(torch.randn(1, 3, 64, 64))
    assert list(out) == ["stem", "stage_0", "stage_1", "features", "pre_logits", "logits"]
    assert out["stem"].shape == (1, 64, 16, 16)
    no_decay = model.no_weight_decay()
    assert "norm.weight" in no_decay and "head.bias" in no_decay and "stages.0.0.norm1.bias" in no_decay
    assert "head.weight" not in no_decay and "stages.0.0.conv1.weight" not in no_decay
    model.set_input_size(96)
    assert model.config.img_size == (96, 96)


def test_save_and_load_model(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.head.weight.normal_()
    vitlab.save_model(model, tmp_path / "bit.safetensors")
    loaded = vitlab.load_model(tmp_path / "bit.safetensors").eval()
    images = torch.randn(1, 3, 48, 48)
    assert torch.equal(loaded(images), model(images))


def test_invalid_configs_are_named():
    with pytest.raises(ConfigError, match="layers"):
        BiTConfig(layers=(3, 0, 6))
    with pytest.raises(ConfigError, match="gn_groups"):
        BiTConfig(gn_groups=48)
    with pytest.raises(ConfigError, match="width_factor"):
        BiTConfig(width_factor=0)


# -- weight standardisation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["var", "std"])
def test_weight_standardisation_formulas(style):
    weight = torch.randn(8, 4, 3, 3, dtype=torch.float64) * 3 + 1
    w = weight.numpy().reshape(8, -1)
    mean, var = w.mean(axis=1, keepdims=True), w.var(axis=1, keepdims=True)  # population statistics
    eps = 1e-3  # large enough that the two formulas differ visibly
    expected = (w - mean) / np.sqrt(var + eps) if style == "var" else (w - mean) / (np.sqrt(var) + eps)
    got = standardize_weight(weight, eps, style).reshape(8, -1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="style"):
        StdConv2d(4, 8, 3, style="both")
