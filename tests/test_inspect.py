"""Inspection tools of Section 4.5: attention rollout, mean attention distance, position similarity, filters."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import torch
from report_helpers import assert_matplotlib_png
from train_helpers import subprocess_env, tiny_tree, write_config

import vitlab
from vitlab.inspect.attention import (attention_batch_size, attention_rollout, mean_attention_distance,
                                      rollout_heatmap, summarise_attention, token_pixels)
from vitlab.inspect.commands import FIGURE_NAMES
from vitlab.inspect.embeddings import embedding_filters, position_similarity


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


HYBRID = {"name": "vit_ti2", "hybrid_layers": [], "hybrid_width": 32, "depth": 2, "width": 32, "mlp_dim": 64,
          "num_heads": 2}


def test_summarise_attention_equals_the_all_at_once_reduction() -> None:
    """Reducing batch by batch (bounded memory) gives the distances and rollouts of keeping every map."""
    model = small_model()
    images = torch.randn(10, 3, 32, 32)
    summary = summarise_attention(model, images.split(3), num_rollout=4)
    torch.testing.assert_close(summary.distances, mean_attention_distance(model.get_attention_maps(images), (4, 4), 8))
    torch.testing.assert_close(summary.rollout, rollout_heatmap(model, images[:4]))
    assert summary.images == 10


def test_attention_batch_shrinks_with_the_token_count() -> None:
    big = vitlab.create_model("vit_ti4", img_size=224)  # 3,137 tokens: 1.4 GB of maps per image
    assert attention_batch_size(big) == 1
    assert attention_batch_size(vitlab.create_model("vit_ti4", img_size=28)) == 32


def test_hybrid_distances_are_in_pixels_of_the_input() -> None:
    model = vitlab.create_model("vit_ti2", num_classes=3, img_size=32, **{k: v for k, v in HYBRID.items() if k != "name"})
    assert model.config.grid_size == (4, 4) and token_pixels(model) == 8  # stem stride 4 x patch 2
    assert embedding_filters(model)[0].shape[1:] == (3, 7, 7)  # the ResNet root's filters see the pixels


def test_inspect_random_vit_ti4_on_fashion_mnist_stays_under_2_gb(tmp_path) -> None:
    """The reported case: `vitlab inspect --model vit_ti4 --dataset fashion_mnist` grew to 24 GB at 224 px."""
    probe = (
        "import resource, subprocess, sys; "
        "rc = subprocess.call(sys.argv[1:]); "
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    command = [sys.executable, "-c", probe, sys.executable, "-m", "vitlab", "inspect", "--model", "vit_ti4",
               "--dataset", "fashion_mnist", "--distance-images", "32", "--num-images", "4", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    rc, peak_kib = map(int, result.stdout.split()[-2:])
    assert rc == 0, result.stderr
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    details = json.loads((tmp_path / "inspect.json").read_text())
    assert details["settings"]["img_size"] == [28, 28]  # the source's own size, not the model's 224 default
    assert len(details["mean_attention_distance_px"]) == 12  # ViT-Ti: 12 layers x 3 heads
    for name in FIGURE_NAMES:
        assert_matplotlib_png(tmp_path / f"{name}.png")


def test_inspect_a_hybrid_run_directory_writes_every_figure(tmp_path) -> None:
    from vitlab.cli import main

    tree = tiny_tree(model=dict(HYBRID), data={"img_size": 32, "options": {"num_samples": 128, "img_size": 32,
                                                                            "num_classes": 4, "channels": 3}})
    tree["train"].update(steps=4, checkpoint_every=0)
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(write_config(tmp_path / "hybrid.yaml", tree)), "--out", str(run)]) == 0
    out = tmp_path / "inspect"
    assert main(["inspect", "--checkpoint", str(run), "--distance-images", "8", "--num-images", "2",
                 "--out", str(out)]) == 0
    for name in FIGURE_NAMES:
        assert_matplotlib_png(out / f"{name}.png")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["family"] == "hybrid" and summary["grid"] == "4x4" and summary["dataset"] == "synthetic/test"
    details = json.loads((out / "inspect.json").read_text())
    assert details["settings"]["pixels_per_token"] == 8 and len(details["mean_attention_distance_px"]) == 2
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "../run/report.html" in html
    assert (run / "report.html").is_file()  # the training command wrote its own report at the end


def test_inspect_refuses_a_resnet_by_name(tmp_path, capsys) -> None:
    from vitlab.cli import main

    assert main(["inspect", "--model", "bit_r50x1", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "draws ViTs and hybrids" in capsys.readouterr().err
