"""ViT parity with timm, Hugging Face and the official .npz layout (random weights, no downloads)."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import _load_weights as timm_load_official_npz
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification, ViTModel

import vitlab
from vitlab.errors import CheckpointError
from vitlab.interop import official
from vitlab.interop.hf import from_hf
from vitlab.interop.timm import from_timm

from conftest import jitter_, relative_error


@pytest.mark.parametrize("name", ["vit_base_patch16_224", "vit_small_patch32_224"])
def test_from_timm_gives_timm_logits(name: str) -> None:
    source = jitter_(timm.create_model(name, pretrained=False)).eval()
    model = from_timm(source).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in source.parameters())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert relative_error(source(x), model(x)) < 1e-5
    assert model.config.gelu == "exact"


def test_from_timm_refuses_architectures_outside_the_paper() -> None:
    source = timm.create_model("vit_small_patch32_224", pretrained=False, global_pool="avg", class_token=False)
    with pytest.raises(CheckpointError, match="fc_norm"):
        from_timm(source)


def small_hf_config(**overrides) -> HFViTConfig:
    options = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   image_size=32, patch_size=8, num_labels=5)
    options.update(overrides)
    return HFViTConfig(**options)


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_pytorch_tanh"])
def test_from_hf_classifier_gives_hf_logits(hidden_act: str) -> None:
    source = jitter_(ViTForImageClassification(small_hf_config(hidden_act=hidden_act))).eval()
    model = from_hf(source).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(source(pixel_values=x).logits, model(x)) < 1e-5
    assert model.config.ln_eps == source.config.layer_norm_eps


def test_from_hf_pooler_becomes_pre_logits() -> None:
    source = jitter_(ViTModel(small_hf_config(), add_pooling_layer=True)).eval()
    model = from_hf(source).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(x), pre_logits=True)
        assert relative_error(source(pixel_values=x).pooler_output, ours) < 1e-5


def ours_small(**overrides) -> torch.nn.Module:
    options = dict(num_classes=7, img_size=64, depth=2, gelu="exact")
    options.update(overrides)
    return jitter_(vitlab.create_model("vit_ti16", **options)).eval()


def test_save_npz_is_read_by_timm_official_loader(tmp_path) -> None:
    model = ours_small()
    path = tmp_path / "vit.npz"
    official.save_npz(model, path)
    reader = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, img_size=64, depth=2).eval()
    timm_load_official_npz(reader, str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(reader(x), model(x)) < 1e-5


@pytest.mark.parametrize("overrides", [{}, {"representation_size": 48}, {"classifier": "gap"}])
def test_npz_round_trip_and_architecture_inference(tmp_path, overrides) -> None:
    model = ours_small(**overrides)
    path = tmp_path / "vit.npz"
    official.save_npz(model, path)
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in keys
    assert ("pre_logits/kernel" in keys) == bool(overrides.get("representation_size"))
    assert ("cls" in keys) == (overrides.get("classifier", "token") == "token")
    rebuilt = official.load_npz_any(path, gelu="exact").eval()
    reloaded = official.load_npz(ours_small(**overrides), path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        assert torch.equal(reloaded(x), model(x))


def test_npz_of_another_resolution_is_resized_on_load(tmp_path) -> None:
    path = tmp_path / "vit.npz"
    official.save_npz(ours_small(), path)
    big = official.load_npz(ours_small(img_size=96), path)
    assert big.pos_embed.weight.shape == (1, 1 + 36, 192)


def test_npz_missing_and_extra_keys_are_named(tmp_path) -> None:
    path = tmp_path / "vit.npz"
    official.save_npz(ours_small(representation_size=48), path)
    with pytest.raises(CheckpointError, match=r"pre_logits/kernel.*build\(num_classes=K\)"):
        official.load_npz(ours_small(), path)
    arrays = official.read_npz(path)
    del arrays["Transformer/encoder_norm/scale"]
    broken = tmp_path / "broken.npz"
    np.savez(broken, **arrays)
    with pytest.raises(CheckpointError, match="encoder_norm/scale"):
        official.load_npz(ours_small(representation_size=48), broken)


def test_npz_prefix_of_training_checkpoints_is_accepted(tmp_path) -> None:
    model = ours_small()
    plain = tmp_path / "plain.npz"
    official.save_npz(model, plain)
    nested = tmp_path / "nested.npz"
    np.savez(nested, **{f"opt/target/{k}": v for k, v in official.read_npz(plain).items()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(official.load_npz(ours_small(), nested)(x), model(x))


def test_garbage_npz_is_reported(tmp_path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.npz"):
        official.read_npz(path)
