"""Inspection tools of Section 4.5: attention rollout, mean attention distance, position similarity, filters."""
from __future__ import annotations

import math

import torch

import vitlab
from vitlab.inspect.attention import attention_rollout, mean_attention_distance, rollout_heatmap
from vitlab.inspect.embeddings import embedding_filters, position_similarity
from vitlab.inspect.figures import distance_figure, filters_figure, heatmap_overlay, similarity_figure


def test_rollout_is_the_product_of_residual_mixed_head_averages() -> None:
    maps = [torch.softmax(torch.randn(2, 3, 5, 5), dim=-1) for _ in range(3)]
    eye = torch.eye(5)
    mixed = [(m.mean(1) + eye) / (m.mean(1) + eye).sum(-1, keepdim=True) for m in maps]
    torch.testing.assert_close(attention_rollout(maps), mixed[2] @ mixed[1] @ mixed[0])
    identity = [torch.eye(5).expand(1, 2, 5, 5) for _ in range(4)]
    torch.testing.assert_close(attention_rollout(identity), torch.eye(5)[None])
    torch.testing.assert_close(attention_rollout(maps).sum(-1), torch.ones(2, 5))  # rows stay distributions


def test_mean_attention_distance_known_cases() -> None:
    n = 4  # 2x2 grid of 16-px patches, plus a class token
    self_only = torch.zeros(1, 1, n + 1, n + 1)
    self_only[0, 0, torch.arange(n + 1), torch.arange(n + 1)] = 1.0
    uniform = torch.full((1, 1, n + 1, n + 1), 1.0 / (n + 1))
    distances = mean_attention_distance([self_only, uniform], grid=(2, 2), patch_size=16)
    assert distances.shape == (2, 1)
    assert distances[0, 0].item() == 0.0
    expected = (0 + 16 + 16 + 16 * math.sqrt(2)) / 4  # every patch sees the same set of distances
    assert abs(distances[1, 0].item() - expected) < 1e-4


def small_model() -> torch.nn.Module:
    return vitlab.create_model("vit_ti8", num_classes=3, img_size=32, depth=2).eval()


def test_rollout_heatmap_and_distance_on_a_model() -> None:
    model = small_model()
    images = torch.randn(3, 3, 32, 32)
    heat = rollout_heatmap(model, images)
    assert heat.shape == (3, 4, 4) and heat.min() >= 0 and heat.max() <= 1
    distances = mean_attention_distance(model.get_attention_maps(images), (4, 4), 8)
    assert distances.shape == (2, 3) and (distances > 0).all() and (distances < 32 * math.sqrt(2)).all()


def test_position_similarity_is_cosine_with_unit_diagonal() -> None:
    model = small_model()
    similarity = position_similarity(model)
    assert similarity.shape == (4, 4, 4, 4)
    for i in range(4):
        for j in range(4):
            assert abs(similarity[i, j, i, j].item() - 1) < 1e-5
    torch.testing.assert_close(similarity, similarity.permute(2, 3, 0, 1))


def test_embedding_filters_are_principal_components() -> None:
    model = small_model()
    filters, explained = embedding_filters(model, components=28)
    assert filters.shape == (28, 3, 8, 8)
    assert (explained[:-1] >= explained[1:]).all() and explained.sum() <= 1.0 + 1e-6
    flat = filters.flatten(1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(28), atol=1e-4, rtol=0)  # orthonormal directions


def test_figures_render(tmp_path) -> None:
    model = small_model()
    heatmap_overlay(torch.randint(0, 255, (1, 28, 28), dtype=torch.uint8), torch.rand(4, 4)).save(tmp_path / "a.png")
    similarity_figure(position_similarity(model)).save(tmp_path / "b.png")
    filters_figure(embedding_filters(model)[0]).save(tmp_path / "c.png")
    distance_figure(torch.rand(2, 3) * 20, 45).save(tmp_path / "d.png")
    assert all((tmp_path / f"{n}.png").stat().st_size > 100 for n in "abcd")
