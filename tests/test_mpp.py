"""Masked patch prediction (Section 4.6): targets, corruption proportions, learning, and transfer."""
from __future__ import annotations

import json

import pytest
import torch

import vitlab
from vitlab.errors import ConfigError
from vitlab.weights import resolve
from vitlab.train.mpp import MaskedPatchPrediction, mean_colour_targets, mpp_num_classes


def test_mean_colour_is_3_bits_per_channel() -> None:
    assert mpp_num_classes(3) == 512 and mpp_num_classes(1) == 8
    images = torch.full((1, 3, 8, 8), -1.0)
    images[0, 0, :, 4:] = 1.0  # right patch: red at the top level
    images[0, 2, 4:, :4] = 0.0  # bottom-left patch: blue at mid level -> level 4
    classes = mean_colour_targets(images, patch_size=4)
    assert classes.shape == (1, 4)
    assert classes[0].tolist() == [0, 7, 4 * 64, 7]  # red counts 8^0, green 8^1, blue 8^2


def test_corruption_follows_the_paper_proportions() -> None:
    objective = MaskedPatchPrediction()
    torch.manual_seed(0)
    tokens = torch.randn(64, 196, 8)
    mask_token = torch.full((1, 1, 8), 7.0)
    out, corrupted = objective.corrupt(tokens, mask_token)
    rate = corrupted.float().mean().item()
    masked = (out == 7.0).all(-1)
    unchanged = (out == tokens).all(-1)
    assert abs(rate - 0.5) < 0.01
    assert abs(masked.float().sum().item() / corrupted.sum().item() - 0.8) < 0.02
    kept = (unchanged & corrupted).float().sum().item() / corrupted.sum().item()
    assert abs(kept - 0.1) < 0.02  # 10% of the corrupted keep their embedding (random ones rarely equal by chance)
    assert unchanged[~corrupted].all()


def test_objective_learns_mean_colours_and_transfers() -> None:
    torch.manual_seed(0)
    model = vitlab.create_model("vit_ti4", img_size=16, num_classes=0, depth=2, width=64, mlp_dim=128,
                                num_heads=2, mpp_classes=512)
    objective = MaskedPatchPrediction()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    colours = torch.rand(8, 3, 1, 1) * 2 - 1
    images = (colours + 0.05 * torch.randn(8, 3, 16, 16)).clamp(-1, 1)  # flat-coloured images: learnable targets
    first = None
    for _ in range(60):
        loss, stats = objective(model, images, torch.zeros(8))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    assert stats["correct"].item() / stats["count"].item() > 0.5


def test_finetune_drops_the_masked_patch_parts(tmp_path) -> None:
    model = vitlab.create_model("vit_ti4", img_size=16, num_classes=0, depth=1, mpp_classes=512)
    path = tmp_path / "mpp.safetensors"
    vitlab.save_model(model, path)
    tuned = resolve(path).build(num_classes=10, img_size=32)
    assert not hasattr(tuned, "mpp_head") and tuned.config.mpp_classes == 0
    assert tuned(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_objective_refuses_models_without_the_head() -> None:
    with pytest.raises(ConfigError, match="mpp_classes"):
        MaskedPatchPrediction()(vitlab.create_model("vit_ti4", img_size=16, depth=1), torch.zeros(1, 3, 16, 16), None)


def test_engine_pretrains_with_masked_patch_prediction_from_the_config(tmp_path) -> None:
    from train_helpers import tiny_config, tiny_tree, weights
    from vitlab.config import RunConfig
    from vitlab.train.engine import run_training

    summary = run_training(tiny_config(train={"objective": "mpp", "steps": 12, "checkpoint_every": 0}),
                           tmp_path / "mpp")
    # the score is the share of corrupted patches whose colour class is predicted: named so, never "test_accuracy"
    assert summary["objective"] == "mpp" and "test_accuracy" not in summary["metrics"]
    assert set(summary["metrics"]) == {"mpp_test_patch_accuracy", "mpp_test_loss"}
    logged = [json.loads(line) for line in (tmp_path / "mpp" / "metrics.jsonl").read_text().splitlines()]
    assert all(not key.endswith("_accuracy") or key.startswith("mpp_") for record in logged for key in record)
    assert any("mpp_train_patch_accuracy" in record for record in logged)
    # seeded run: 0.031 on Zen 5 after 12 steps; uniform chance over the 512 colour bins is 0.002, so the band also
    # says the head learned something
    assert summary["metrics"]["mpp_test_patch_accuracy"] == pytest.approx(0.031, abs=0.015)
    saved = weights(tmp_path / "mpp")
    assert saved["mpp_head.weight"].shape == (512, 32) and "head.weight" not in saved
    tuned = resolve(tmp_path / "mpp" / "checkpoints" / "last.safetensors").build(num_classes=4, img_size=16)
    assert tuned(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    with pytest.raises(ConfigError, match="pre-training objective"):
        RunConfig.from_dict(dict(tiny_tree(train={"objective": "mpp"}), task="finetune"))


def test_metric_names_say_what_they_measure() -> None:
    from vitlab.train.objectives import metric_name

    assert metric_name("classify", "test_accuracy") == "test_accuracy"
    assert metric_name("mpp", "test_accuracy") == "mpp_test_patch_accuracy"
    assert metric_name("mpp", "dev_loss") == "mpp_dev_loss" and metric_name("mpp", "lr") == "lr"
