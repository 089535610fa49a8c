"""Relative positional embeddings (Appendix D.4): an extra attention of the content query against one learned
embedding per offset p_q - p_k, whose logits are added to the content logits before the softmax."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.errors import ConfigError
from vitlab.models.posemb import RelativePositionLogits, relative_offset_index


def tiny(posemb: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return vitlab.create_model("vit_ti4", num_classes=5, img_size=28, in_chans=1, depth=2, width=32, mlp_dim=64,
                               num_heads=2, posemb=posemb, **extra)


@pytest.mark.parametrize("posemb,offsets", [("relative", 2 * 49 - 1 + 3), ("relative_2d", 13 * 13 + 3)])
def test_shapes_one_table_per_layer_and_no_absolute_table(posemb: str, offsets: int) -> None:
    model = tiny(posemb)
    tables = {n: p.shape for n, p in model.named_parameters() if "rel_pos" in n}
    assert tables == {f"blocks.{i}.attn.rel_pos.table": (offsets, 32) for i in range(2)}
    assert not any(n.startswith("pos_embed.") for n, _ in model.named_parameters())
    images = torch.randn(3, 1, 28, 28)
    assert model(images).shape == (3, 5)
    maps = model.get_attention_maps(images)
    assert [m.shape for m in maps] == [(3, 2, 50, 50)] * 2
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 2, 50))
    assert all(n in model.no_weight_decay() for n in tables)


def test_offset_index_counts_each_offset_of_the_grid() -> None:
    index, count = relative_offset_index((3, 4), two_d=False)
    assert count == 23 and index.min() == 0 and index.max() == 22
    assert index[5, 2] == index[7, 4] == 3 + 11  # raster offset +3
    index, count = relative_offset_index((3, 4), two_d=True)
    assert count == 5 * 7 and len(index.unique()) == 35
    # (1, 2) vs (0, 0) and (2, 3) vs (1, 1): the same (dy, dx) = (1, 2)
    assert index[1 * 4 + 2, 0] == index[2 * 4 + 3, 1 * 4 + 1]
    # (1, 0) vs (0, 1) and (0, 3) vs (0, 0) share the raster offset 3 but not the 2-D offset ((1, -1) vs (0, 3))
    assert index[1 * 4 + 0, 0 * 4 + 1] != index[0 * 4 + 3, 0]
    raster, _ = relative_offset_index((3, 4), two_d=False)
    assert raster[1 * 4 + 0, 0 * 4 + 1] == raster[0 * 4 + 3, 0]


@pytest.mark.parametrize("two_d", [False, True])
def test_bias_depends_only_on_the_offset(two_d: bool) -> None:
    """With the same query at every position, bias(i, j) == bias(i + s, j + s) for every shift that stays on the
    grid: the term sees where the key lies relative to the query, never where either lies."""
    gh, gw = 4, 5
    layer = RelativePositionLogits((gh, gw), width=8, num_heads=2, num_prefix_tokens=1, two_d=two_d)
    q = torch.randn(1, 2, 1, 4).expand(1, 2, 1 + gh * gw, 4)
    bias = layer(q)[0, :, 1:, 1:]  # [H, N, N], prefix dropped
    full = layer(q)[0].detach()  # the class token's pairs: one embedding each for class->class, class->patch, patch->class
    assert len(full[0, 0, 1:].unique()) == 1 and len(full[0, 1:, 0].unique()) == 1
    assert len({float(full[0, 0, 0]), float(full[0, 0, 1]), float(full[0, 1, 0])}) == 3
    checked = 0
    for qy in range(gh):
        for qx in range(gw):
            for ky in range(gh):
                for kx in range(gw):
                    for sy, sx in ((1, 0), (0, 1), (1, 1), (2, -1)):
                        if not (0 <= qy + sy < gh and 0 <= ky + sy < gh and 0 <= qx + sx < gw and 0 <= kx + sx < gw):
                            continue
                        a = bias[:, qy * gw + qx, ky * gw + kx]
                        b = bias[:, (qy + sy) * gw + qx + sx, (ky + sy) * gw + kx + sx]
                        torch.testing.assert_close(a, b, rtol=0, atol=0)
                        checked += 1
    assert checked > 500
    # ...and it does depend on the offset: distinct offsets give distinct logits.
    assert len(bias[0].flatten().unique()) == len(layer.index[1:, 1:].unique())


def test_relative_model_sees_position_and_none_does_not() -> None:
    """Permuting the patches of an image leaves a model without position (GAP head) unchanged; the relative model
    changes: relative embeddings do carry spatial information."""
    images = torch.randn(2, 1, 28, 28)
    blocks = images.reshape(2, 1, 7, 4, 7, 4)
    shuffled = blocks.flip(2).reshape(2, 1, 28, 28)  # rows of patches in reverse order
    for posemb, same in (("none", True), ("relative", False), ("relative_2d", False)):
        model = tiny(posemb, classifier="gap").eval()
        model.head = torch.nn.Linear(32, 5)  # a non-zero head so the logits depend on the features
        a, b = model(images), model(shuffled)
        assert torch.allclose(a, b, atol=1e-5) is same, posemb


def test_gradients_reach_every_relative_table() -> None:
    model = tiny("relative_2d")
    model.head = torch.nn.Linear(32, 5)
    model(torch.randn(4, 1, 28, 28)).logsumexp(-1).sum().backward()
    for block in model.blocks:
        grad = block.attn.rel_pos.table.grad
        assert grad is not None and grad.abs().sum() > 0


def test_class_token_only_block_matches_the_full_block() -> None:
    """A block computed for the class token's query only (what the last block does when only the class token is
    read) gives that token the output of the full block: its relative term is the class->class/patch row."""
    model = tiny("relative").eval()
    tokens = model._embed(torch.randn(2, 1, 28, 28))
    block = model.blocks[-1]
    torch.testing.assert_close(block(tokens, num_queries=1), block(tokens)[:, :1], atol=1e-5, rtol=1e-5)


def test_sdpa_and_explicit_paths_agree() -> None:
    """Long sequences go through SDPA with the bias as a float mask; short ones through the explicit product."""
    model = vitlab.create_model("vit_ti4", num_classes=0, img_size=40, in_chans=1, depth=1, width=32, mlp_dim=64,
                                num_heads=2, posemb="relative_2d").eval()  # 100 patches: SDPA
    images = torch.randn(2, 1, 40, 40)
    features = model.forward_features(images)
    maps = model.get_attention_maps(images)[0]  # explicit probabilities with the bias
    block = model.blocks[0]
    tokens = model._embed(images)
    v = block.attn._heads(block.norm1(tokens))[2]
    mixed = block.attn.proj(torch.matmul(maps, v).transpose(1, 2).flatten(2))
    expected = tokens + mixed
    expected = model.norm(expected + block.mlp(block.norm2(expected)))
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("posemb", ["relative", "relative_2d"])
def test_save_load_round_trip(tmp_path, posemb: str) -> None:
    model = tiny(posemb).eval()
    path = tmp_path / "m.safetensors"
    vitlab.save_model(model, path)
    loaded = vitlab.load_model(path).eval()
    assert loaded.config.posemb == posemb
    images = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(images), model(images))
    for a, b in zip(model.blocks, loaded.blocks):
        assert torch.equal(a.attn.rel_pos.table, b.attn.rel_pos.table)


def test_2d_tables_move_to_another_grid_and_1d_ones_refuse(tmp_path) -> None:
    model = tiny("relative_2d")
    path = tmp_path / "m.safetensors"
    vitlab.save_model(model, path)
    big = vitlab.load_model(path, img_size=36)  # 9x9 grid: 17x17 offsets
    assert big.blocks[0].attn.rel_pos.table.shape == (17 * 17 + 3, 32)
    torch.testing.assert_close(big.blocks[0].attn.rel_pos.table[-3:], model.blocks[0].attn.rel_pos.table[-3:])
    # the centre offset (0, 0) keeps its embedding under the corner-aligned interpolation
    torch.testing.assert_close(big.blocks[0].attn.rel_pos.table[8 * 17 + 8], model.blocks[0].attn.rel_pos.table[6 * 13 + 6])
    assert big(torch.randn(1, 1, 36, 36)).shape == (1, 5)
    with pytest.raises(ConfigError, match="relative_2d"):
        tiny("relative").set_input_size(36)
