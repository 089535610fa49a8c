"""Few-shot linear evaluation: the closed form against a direct solve, separable data, representations, CLI.

What the paper / big_vision say and these tests check: the few-shot probe is ridge regression of targets in
{-1, 1}^K on standardised features plus a constant bias feature of 100, solved in closed form (fewshot_lsr);
its eigendecomposition trick must give the same weights as solving the augmented least-squares system.
"""
from __future__ import annotations

import json
import math
import types

import pytest
import torch

import vitlab
from vitlab.errors import ConfigError
from vitlab.evaluate.fewshot import (
    BIAS_CONSTANT,
    DEFAULT_L2,
    RidgeSolver,
    choose_l2,
    evaluate_features,
    fewshot_accuracy,
    representation,
    ridge_targets,
    standardise,
)


def direct_ridge(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float) -> torch.Tensor:
    """Ridge by least squares on the augmented system [X; sqrt(l2) I] W = [Y; 0], in float64."""
    x64 = features.double()
    mean = x64.mean(0, keepdim=True)
    std = x64.std(0, unbiased=False, keepdim=True) + 1e-5
    x = torch.cat([(x64 - mean) / std, torch.full((len(x64), 1), BIAS_CONSTANT, dtype=torch.float64)], dim=1)
    y = 2.0 * torch.nn.functional.one_hot(labels, num_classes).double() - 1.0
    d = x.shape[1]
    a = torch.cat([x, math.sqrt(l2) * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([y, torch.zeros(d, num_classes, dtype=torch.float64)])
    return torch.linalg.lstsq(a, b, driver="gelsd").solution  # [D+1, K]


@pytest.mark.parametrize("n, d", [(50, 12), (12, 40)])  # N >= D+1 (eigh of X^T X) and N < D (of X X^T)
@pytest.mark.parametrize("l2", [2.0**-2, 1.0, DEFAULT_L2, 2.0**16])
def test_closed_form_matches_direct_least_squares(n: int, d: int, l2: float) -> None:
    generator = torch.Generator().manual_seed(n * 100 + d)
    features = torch.randn(n, d, generator=generator, dtype=torch.float64) * 3 + 1
    labels = torch.arange(n) % 4
    solver = RidgeSolver.fit(features, labels, 4)
    expected = direct_ridge(features, labels, 4, l2)
    got = solver.weights(l2)
    assert got.dtype == torch.float64 and got.shape == (d + 1, 4)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()
    # and the predictions they make on fresh points agree
    probe = torch.randn(30, d, generator=generator, dtype=torch.float64)
    direct_scores = standardise(probe, solver.mean, solver.std) @ expected
    assert torch.allclose(solver.scores(probe, l2), direct_scores, atol=1e-6, rtol=0)


def test_targets_are_plus_minus_one() -> None:
    y = ridge_targets(torch.tensor([0, 2]), 3)
    assert y.tolist() == [[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]


def separable_toy(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes at distinct corners of a 16-D cube, +-1 per coordinate, with noise of 0.1 (separable)."""
    centres = torch.sign(torch.randn(4, 16, generator=torch.Generator().manual_seed(99)))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n_per_class)
    return centres[labels] + 0.1 * torch.randn(len(labels), 16, generator=generator), labels


def test_linearly_separable_toy_reaches_100_percent() -> None:
    train_x, train_y = separable_toy(25, seed=0)
    test_x, test_y = separable_toy(200, seed=1)
    assert fewshot_accuracy(train_x, train_y, test_x, test_y, 4) == 1.0
    results = evaluate_features(train_x, train_y, test_x, test_y, 4, shots=(1, 5, 10, 25), seeds=(0, 1, 2))
    assert [r.shots for r in results] == [1, 5, 10, 25]
    # One shot per class cannot estimate the spread of a feature that is constant over the class centres
    # (standardising then blows its noise up), so 1-shot is only near-perfect; 5 shots and up are exact.
    assert results[0].mean > 0.9
    for r in results[1:]:
        assert r.mean == 1.0 and r.std == 0.0 and len(r.accuracies) == 3


def test_random_labels_are_near_chance() -> None:
    """A probe cannot learn labels that carry no information: it must not score well on held-out data."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 32, generator=generator)
    y = torch.randint(0, 5, (2000,), generator=generator)
    acc = fewshot_accuracy(x[:250], y[:250], x[250:], y[250:], 5)
    assert acc < 0.3


def test_l2_chosen_on_dev_prefers_the_better_value() -> None:
    """Few shots, many noise features: too little penalty over-fits, too much leaves only the bias; the dev
    split must pick the middle value, and choose_l2 must return the arg-max of the dev accuracies."""
    generator = torch.Generator().manual_seed(5)
    signal = torch.randint(0, 2, (2000,), generator=generator)
    x = torch.randn(2000, 50, generator=generator)
    x[:, 0] += 2 * signal - 1
    solver = RidgeSolver.fit(x[:60], signal[:60], 2)
    dev_x, dev_y, test_x, test_y = x[100:1000], signal[100:1000], x[1000:], signal[1000:]
    grid = (2.0**-4, 2.0**4, 2.0**20)
    dev_acc = {l2: solver.accuracy(dev_x, dev_y, l2) for l2 in grid}
    chosen = choose_l2(solver, dev_x, dev_y, grid=grid)
    assert chosen == 2.0**4 and dev_acc[chosen] == max(dev_acc.values())
    assert solver.accuracy(test_x, test_y, chosen) > max(solver.accuracy(test_x, test_y, v) for v in (grid[0], grid[2]))
    dev = evaluate_features(x[:100], signal[:100], test_x, test_y, 2, shots=(5,), seeds=(0, 1), l2="dev",
                            dev_features=dev_x, dev_labels=dev_y)
    assert len(dev[0].l2) == 2
    with pytest.raises(ConfigError):
        evaluate_features(x[:100], signal[:100], test_x, test_y, 2, shots=(5,), l2="dev")
    with pytest.raises(ConfigError):
        solver.weights(0.0)


def tiny_vit(**overrides) -> torch.nn.Module:
    return vitlab.create_model("vit_ti4", num_classes=3, img_size=16, in_chans=1, depth=2, width=32, mlp_dim=64,
                               num_heads=2, **overrides).eval()


def test_representations_by_name() -> None:
    images = torch.randn(5, 1, 16, 16)
    model = tiny_vit(representation_size=24)
    with torch.no_grad():
        features = model.forward_features(images)
        assert torch.allclose(representation(model, images), model.forward_head(features, pre_logits=True))
        assert representation(model, images, "pre_logits").shape == (5, 24)
        assert torch.allclose(representation(model, images, "token"), features[:, 0])
        assert torch.allclose(representation(model, images, "pooled"), features[:, 0])
        assert torch.allclose(representation(model, images, "gap"), features[:, 1:].mean(1))
        assert representation(model, images, "block_0").shape == (5, 32)
    with pytest.raises(ConfigError, match="no class token"):
        representation(tiny_vit(classifier="gap"), images, "token")
    with pytest.raises(ConfigError, match="unknown"):
        representation(model, images, "logits_please")


def test_representation_of_a_model_without_named_intermediates() -> None:
    class Plain(torch.nn.Module):
        def forward_features(self, x):
            return x.flatten(1)

        def forward_head(self, features, pre_logits=False):
            return features * 2 if pre_logits else features.sum(1, keepdim=True)

    x = torch.randn(3, 1, 4, 4)
    assert torch.allclose(representation(Plain(), x), x.flatten(1) * 2)
    with pytest.raises(ConfigError):
        representation(Plain(), x, "token")


class Pixels(torch.nn.Module):
    """A "model" whose representation is the raw pixels: a known-good feature extractor for the pipeline."""

    def __init__(self, img_size: int = 16, in_chans: int = 1) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(img_size=(img_size, img_size), in_chans=in_chans)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features


def test_fewshot_evaluate_end_to_end_on_a_data_source() -> None:
    from vitlab.data import get_source
    from vitlab.evaluate.fewshot import fewshot_evaluate

    train = get_source("synthetic", "train", num_samples=120, num_classes=3, img_size=16, channels=1)
    test = get_source("synthetic", "test", num_samples=60, num_classes=3, img_size=16, channels=1)
    # synthetic classes are fixed patterns plus noise: a linear probe on the pixels separates them
    report = fewshot_evaluate(Pixels(), train, test, shots=(1, 5), seeds=(0, 1), batch_size=64)
    assert [r.shots for r in report.results] == [1, 5]
    assert report.test_examples == 60 and report.num_classes == 3 and report.dataset == "synthetic"
    assert report.by_shots()[5].mean > 0.85
    assert "| 5 |" in report.table()
    # a ViT through the same path: batch size must not change anything, and dev-chosen l2 runs
    model = tiny_vit()
    first = fewshot_evaluate(model, train, test, shots=(1, 5), seeds=(0, 1), batch_size=64)
    again = fewshot_evaluate(model, train, test, shots=(1, 5), seeds=(0, 1), batch_size=32)
    assert [r.accuracies for r in first.results] == [r.accuracies for r in again.results]
    dev = fewshot_evaluate(model, train, test, shots=(5,), seeds=(0,), l2="dev", test_limit=30, dev_size=30)
    assert dev.test_examples == 30 and dev.l2_mode == "dev"


def test_fewshot_cli(tmp_path, capsys) -> None:
    from vitlab.cli import main

    model = tiny_vit()
    weights = tmp_path / "tiny.safetensors"
    vitlab.save_model(model, weights)
    out = tmp_path / "fewshot.json"
    code = main(["fewshot", "--checkpoint", str(weights), "--dataset", "synthetic", "--option", "num_samples=90",
                 "--option", "num_classes=3", "--option", "img_size=16", "--option", "channels=1",
                 "--shots", "1,5", "--seeds", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "few-shot linear evaluation" in printed and "| 5 |" in printed
    saved = json.loads(out.read_text())
    assert [r["shots"] for r in saved["results"]] == [1, 5] and len(saved["results"][0]["accuracies"]) == 2
    assert main(["fewshot", "--checkpoint", str(weights), "--dataset", "synthetic", "--shots", "0"]) == 2
    assert main(["fewshot", "--checkpoint", str(weights), "--dataset", "synthetic", "--l2", "-1"]) == 2
    assert "expected a positive number" in capsys.readouterr().err


def test_frozen_models_load_from_our_files_run_dirs_and_official_npz(tmp_path) -> None:
    from vitlab.weights import resolve
    from vitlab.interop.official import save_npz

    model = vitlab.create_model("vit_ti4", num_classes=3, img_size=16, in_chans=3, depth=1, width=32, mlp_dim=64,
                                num_heads=2).eval()
    torch.nn.init.normal_(model.pos_embed.weight, std=0.1)
    images = torch.randn(2, 3, 16, 16)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    vitlab.save_model(model, tmp_path / "run" / "checkpoints" / "best.safetensors")
    save_npz(model, tmp_path / "model.npz")
    with torch.no_grad():
        expected = representation(model, images)
        for source in (tmp_path / "run", tmp_path / "model.npz"):
            loaded = resolve(source).build().eval()
            assert torch.allclose(representation(loaded, images), expected, atol=1e-5), source
        bigger = resolve(tmp_path / "run").build(img_size=24)  # a new resolution: 6x6 grid
        assert representation(bigger, torch.randn(2, 3, 24, 24)).shape == (2, 32)
