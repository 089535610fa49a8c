"""The ViT family: the paper's sizes, its architecture choices, its initialisation, and clear errors."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.errors import ConfigError, ShapeError
from vitlab.models.flops import count_macs, count_params

# The official code's own counts (models_test.py) at 224 px, 1000 classes, no pre-logits.
OFFICIAL_COUNTS = {"vit_ti16": 5_717_416, "vit_b16": 86_567_656, "vit_l16": 304_326_632, "vit_h14": 632_045_800}
# Table 1 models as timm reports them, in millions (rounded to 0.01M).
COUNTS_MILLIONS = {"vit_b16": 86.57, "vit_b32": 88.22, "vit_l16": 304.33, "vit_l32": 306.54, "vit_h14": 632.05}


@pytest.mark.parametrize("name,count", OFFICIAL_COUNTS.items())
def test_parameter_counts_match_official_code(name: str, count: int) -> None:
    assert count_params(name) == count


@pytest.mark.parametrize("name,millions", COUNTS_MILLIONS.items())
def test_parameter_counts_match_table1_to_001m(name: str, millions: float) -> None:
    assert round(count_params(name) / 1e6, 2) == millions


@pytest.mark.parametrize("name,gmacs", {"vit_b16": 17.6, "vit_b32": 4.4, "vit_l32": 15.4}.items())
def test_gmacs_match_published(name: str, gmacs: float) -> None:
    assert round(count_macs(name) / 1e9, 1) == gmacs


def test_table1_sizes() -> None:
    for name, (depth, width, mlp, heads) in {
        "vit_b16": (12, 768, 3072, 12), "vit_l16": (24, 1024, 4096, 16), "vit_h14": (32, 1280, 5120, 16),
        "vit_ti16": (12, 192, 768, 3), "vit_s16": (12, 384, 1536, 6),
    }.items():
        with torch.device("meta"):
            cfg = vitlab.create_model(name).config
        assert (cfg.depth, cfg.width, cfg.mlp_dim, cfg.num_heads) == (depth, width, mlp, heads)


@pytest.mark.parametrize("alias,canonical", [("ViT-B/16", "vit_b16"), ("ViT-H/14", "vit_h14"), ("vit-s/4", "vit_s4")])
def test_paper_spellings_are_aliases(alias: str, canonical: str) -> None:
    with torch.device("meta"):
        a, b = vitlab.create_model(alias), vitlab.create_model(canonical)
    assert a.config == b.config


def test_list_models_names_every_size() -> None:
    names = vitlab.list_models()
    for name in ("vit_b16", "vit_l32", "vit_h14", "vit_s4", "vit_ti16"):
        assert name in names


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="vit_b16"):
        vitlab.create_model("vit_bb16")


def test_unknown_override_names_it() -> None:
    with pytest.raises(ConfigError, match="widht"):
        vitlab.create_model("vit_ti16", widht=10)


def small(**overrides) -> torch.nn.Module:
    options = dict(num_classes=5, img_size=32, depth=2)
    options.update(overrides)
    return vitlab.create_model("vit_ti8", **options)


@pytest.mark.parametrize("classifier", ["token", "gap"])
@pytest.mark.parametrize("posemb", ["learned", "learned_2d", "sincos_2d", "none"])
def test_every_head_and_position_embedding_runs(classifier: str, posemb: str) -> None:
    model = small(classifier=classifier, posemb=posemb).eval()
    tokens = model.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 16 + (classifier == "token"), 192)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_rectangular_images_and_one_channel() -> None:
    model = small(img_size=(32, 48), in_chans=1)
    assert model.forward_features(torch.randn(1, 1, 32, 48)).shape == (1, 1 + 4 * 6, 192)


def test_pre_logits_is_dense_tanh_and_reset_removes_it() -> None:
    model = small(representation_size=64).eval()
    x = torch.randn(3, 3, 32, 32)
    rep = model.forward_head(model.forward_features(x), pre_logits=True)
    assert rep.shape == (3, 64) and rep.abs().max() <= 1.0
    model.reset_classifier(7)
    assert isinstance(model.pre_logits, torch.nn.Identity)
    assert model.head.weight.shape == (7, 192) and not model.head.weight.any()
    assert model.config.num_classes == 7 and model.config.representation_size is None


def test_official_initialisation() -> None:
    model = vitlab.create_model("vit_s16", num_classes=10)
    assert not model.cls_token.any()
    assert not model.head.weight.any() and not model.head.bias.any()
    assert abs(model.pos_embed.weight.std().item() - 0.02) < 0.002
    fan_in = 3 * 16 * 16
    assert abs(model.patch_embed.proj.weight.std().item() - fan_in**-0.5) < 0.1 * fan_in**-0.5
    fc1 = model.blocks[0].mlp.fc1
    assert 0 < fc1.bias.abs().max().item() < 1e-4  # normal(1e-6)
    bound = (6 / (384 + 1536)) ** 0.5  # Xavier uniform
    assert fc1.weight.abs().max().item() <= bound and fc1.weight.abs().max().item() > 0.9 * bound
    q = model.blocks[0].attn.qkv.weight[:384]
    assert q.abs().max().item() <= (6 / (384 + 384)) ** 0.5
    assert not model.blocks[0].attn.qkv.bias.any()


def test_gelu_is_tanh_by_default_and_exact_on_request() -> None:
    assert small().blocks[0].mlp.approximate == "tanh"
    assert small(gelu="exact").blocks[0].mlp.approximate == "none"
    assert small().blocks[0].norm1.eps == 1e-6


def test_attention_maps_are_probabilities_consistent_with_forward() -> None:
    model = small().eval()
    x = torch.randn(2, 3, 32, 32)
    maps = model.get_attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 3, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 3, 17))
    # The explicit probabilities reproduce the SDPA output of the first block.
    block = model.blocks[0]
    tokens = model._embed(x)
    normed = block.norm1(tokens)
    _, _, v = block.attn._heads(normed)
    manual = block.attn.proj((maps[0] @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(manual, block.attn(normed), atol=1e-5, rtol=1e-5)


def test_dropout_and_stochastic_depth_only_in_training() -> None:
    model = small(dropout=0.1, drop_path=0.2)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model.forward_features(x), model.forward_features(x))
    model.eval()
    assert torch.equal(model.forward_features(x), model.forward_features(x))
    assert model.blocks[0].drop_path.rate == 0.0 and model.blocks[-1].drop_path.rate == pytest.approx(0.2)


def test_no_weight_decay_names_biases_norms_posemb_cls() -> None:
    names = small().no_weight_decay()
    assert {"cls_token", "pos_embed.weight", "norm.weight", "blocks.0.attn.qkv.bias"} <= names
    assert "blocks.0.attn.qkv.weight" not in names and "head.weight" not in names


def test_forward_intermediates_are_named() -> None:
    model = small(representation_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    out = model.forward_intermediates(x)
    assert {"block_0", "block_1", "encoded", "pooled", "pre_logits", "logits"} <= set(out)
    torch.testing.assert_close(out["encoded"], model.forward_features(x))
    torch.testing.assert_close(out["pre_logits"], model.forward_head(out["encoded"], pre_logits=True))


def test_bad_inputs_name_expected_and_received() -> None:
    model = small()
    with pytest.raises(ShapeError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ShapeError, match="expected 32x32 images, got 40x40"):
        model(torch.randn(1, 3, 40, 40))
    with pytest.raises(ShapeError, match="not divisible by the patch size 8"):
        small(img_size=30)
    with pytest.raises(ConfigError, match="posemb='rotary'"):
        small(posemb="rotary")
    with pytest.raises(ConfigError, match="classifier"):
        small(classifier="mean")
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        small(num_heads=5)
