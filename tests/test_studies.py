"""The paper's studies as commands: every shipped preset runs at a tiny size, writes its files, and its verdicts are
computed from its numbers (change a number, the verdict changes)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from vitlab.errors import ConfigError
from vitlab.studies.claims import FAILS, HOLDS, ONE_SEED, SPREAD_COVERS, study_claims, verdict
from vitlab.studies.runner import run_study
from vitlab.studies.study import describe_presets, load_study, study_from_dict

TINY = ["train.steps=2", "optim.warmup_steps=1", "train.batch_size=16", "train.checkpoint_every=0",
        "train.log_every=1", "data.eval_batch_size=512", "model.depth=1", "model.width=32", "model.mlp_dim=64",
        "model.num_heads=2", "data.dataset=synthetic", "data.options.num_samples=200", "data.options.img_size=28",
        "data.options.channels=1"]  # 200 grey 28 px images: a pre-training set made in memory
TINY_GRID = {"data_size": {"sizes": [40, 80], "budget": {"epochs": 0.01, "min_steps": 2, "max_steps": 2}},
             "scaling": {"budgets": [1, 2]}, "head": {"lrs": [0.001, 0.003]}}
TINY_DROP = {"Hybrid-root+Ti/1", "ViT-d6-w96"}  # variants the tiny runs leave out (their claims do not need them)
PRESETS = {"data-size-fmnist": "data_size", "scaling-fmnist": "scaling", "posemb-fmnist": "posemb",
           "head-fmnist": "head", "selfsup-fmnist": "selfsup", "learned-fmnist": "learned"}


def tiny(name: str) -> dict:
    """The preset ``name`` at a size that runs in seconds: 2 steps of 16 synthetic images, 1-block models, 2 seeds
    (so that the verdicts have a spread to read)."""
    study = load_study(name)
    tree = study.to_dict()
    tree["models"] = {label: dataclasses.asdict(v) for label, v in study.models.items()
                      if label not in TINY_DROP}
    for variant in tree["models"].values():
        if any(o.startswith("model.name=bit") for o in variant["overrides"]):
            variant["overrides"].append("model.layers=[1]")  # one bottleneck unit: a ResNet that runs in a blink
    evaluation = tree["evaluation"]
    evaluation.update(shots=[1], seeds=[0], test_limit=60)
    if evaluation["finetune"]:
        evaluation["finetune"]["overrides"] += ["train.steps=2", "optim.warmup_steps=1", "train.batch_size=16"]
    evaluation["inspect_images"] = min(evaluation["inspect_images"], 8)
    tree.update(overrides=[*tree["overrides"], *TINY], seeds=[0, 1], quick={}, **TINY_GRID.get(study.kind, {}))
    if study.metric.endswith("-shot"):
        tree["metric"] = "1-shot"
    return tree


def test_list_shows_the_six_studies() -> None:
    rows = {name: kind for name, kind, _ in describe_presets()}
    assert rows == PRESETS
    for name in PRESETS:  # each preset has a quick size with one seed and a full size with three
        assert load_study(name).seeds == [0, 1, 2]
        assert load_study(name, quick=True).seeds == [0]


def set_metric(points, metric: str, label: str, numbers: list[float], value=None) -> None:
    for point in points:
        if point.label == label and point.value == value:
            point.metrics[metric] = numbers[point.seed]


def by_key(study, points) -> dict[str, str]:
    return {c.key: c.verdict for c in study_claims(study, points)}


def perturb_data_size(study, points):
    vit, bit = "ViT-Ti/4", "BiT-R20x1"
    set_metric(points, study.metric, bit, [0.9, 0.8], 40)
    set_metric(points, study.metric, vit, [0.1, 0.2], 40)
    yield "data-size-small", HOLDS
    set_metric(points, study.metric, vit, [0.95, 0.9], 40)
    yield "data-size-small", FAILS
    set_metric(points, study.metric, vit, [0.91, 0.79], 40)
    yield "data-size-small", SPREAD_COVERS


def perturb_scaling(study, points):
    for label in study.models:
        for value in study.budgets:
            good = study.models[label].family == "ViT"
            set_metric(points, study.metric, label, [0.8, 0.7] if good else [0.3, 0.2], value)
    yield "scaling-vit-vs-bit", HOLDS
    for value in study.budgets:
        set_metric(points, study.metric, "BiT-R20x1", [0.95, 0.9], value)
    yield "scaling-vit-vs-bit", FAILS


def perturb_posemb(study, points):
    set_metric(points, study.metric, "none", [0.1, 0.2])
    for label in ("1-D", "2-D", "relative"):
        set_metric(points, study.metric, label, [0.5, 0.6])
    yield "posemb-none-worse-1-shot", HOLDS
    yield "posemb-kinds-close-1-shot", HOLDS
    set_metric(points, study.metric, "relative", [0.9, 0.95])
    yield "posemb-kinds-close-1-shot", FAILS
    set_metric(points, study.metric, "none", [0.7, 0.8])
    yield "posemb-none-worse-1-shot", FAILS


def perturb_head(study, points):
    set_metric(points, "pretrain", "class token", [0.8, 0.8], 0.001)
    set_metric(points, "pretrain", "class token", [0.5, 0.5], 0.003)
    set_metric(points, "pretrain", "GAP", [0.6, 0.62], 0.001)
    set_metric(points, "pretrain", "GAP", [0.8, 0.805], 0.003)
    yield "head-gap-needs-own-lr", HOLDS
    yield "head-both-work", HOLDS
    set_metric(points, "pretrain", "GAP", [0.9, 0.91], 0.001)  # GAP's best is now the token's rate
    yield "head-gap-needs-own-lr", FAILS
    yield "head-both-work", FAILS


def perturb_selfsup(study, points):
    set_metric(points, "finetune", "MPP", [0.8, 0.82])
    set_metric(points, "finetune", "scratch", [0.5, 0.55])
    set_metric(points, "finetune", "supervised", [0.9, 0.93])
    yield "selfsup-beats-scratch", HOLDS
    yield "selfsup-below-supervised", HOLDS
    set_metric(points, "finetune", "MPP", [0.95, 0.97])
    yield "selfsup-below-supervised", FAILS


def perturb_learned(study, points):
    set_metric(points, "attn_distance_slope", "ViT-Ti/4", [1.0, 2.0])
    yield "learned-distance-grows", HOLDS
    set_metric(points, "attn_distance_slope", "ViT-Ti/4", [-1.0, -2.0])
    yield "learned-distance-grows", FAILS
    set_metric(points, "posemb_distance_corr", "ViT-Ti/4", [-0.5, -0.6])
    yield "learned-posemb-locality", HOLDS


PERTURB = {"data_size": perturb_data_size, "scaling": perturb_scaling, "posemb": perturb_posemb,
           "head": perturb_head, "selfsup": perturb_selfsup, "learned": perturb_learned}


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_study_runs_tiny_and_its_verdicts_follow_its_numbers(tmp_path, name: str) -> None:
    study = study_from_dict(tiny(name))
    points = run_study(study, tmp_path)
    assert len(points) == len(study.models) * len(study.grid) * 2
    for file in ("study.md", "study.csv", "study.json"):
        assert (tmp_path / file).stat().st_size > 0
    saved = json.loads((tmp_path / "study.json").read_text())
    claims = study_claims(study, points)
    assert claims and [c["verdict"] for c in saved["claims"]] == [c.verdict for c in claims]
    for claim in claims:  # each verdict is the verdict of its own per-seed numbers
        assert claim.verdict == verdict(claim.values)
        assert claim.claim in (tmp_path / "study.md").read_text()
    if study.kind in ("data_size", "scaling"):
        assert (tmp_path / "study.png").stat().st_size > 0
    measured = {k for p in points for k in p.metrics}
    assert {"selfsup": {"finetune"}, "learned": {"attn_distance_slope", "posemb_distance_corr"},
            "posemb": {"1-shot", "finetune"}}.get(study.kind, {"1-shot"}) <= measured
    for key, expected in PERTURB[study.kind](study, points):
        assert by_key(study, points)[key] == expected, key


def test_finished_points_are_reused_and_subsets_are_nested(tmp_path) -> None:
    tree = tiny("data-size-fmnist")
    tree["models"] = {"ViT-Ti/4": tree["models"]["ViT-Ti/4"], "BiT-R20x1": tree["models"]["BiT-R20x1"]}
    tree["seeds"] = [0]
    study = study_from_dict(tree)
    points = run_study(study, tmp_path)
    kept = {}
    for size in (40, 80):
        excluded = {int(x) for x in (tmp_path / f"runs/vit-ti-4-n{size}-s0/excluded.txt").read_text().split()}
        kept[size] = set(range(200)) - excluded
    assert len(kept[40]) == 40 and len(kept[80]) == 80 and kept[40] <= kept[80]  # nested, as in the paper
    assert all(p.steps == 2 for p in points)  # the budget rule: min_steps for these tiny subsets
    stamp = (tmp_path / "runs/vit-ti-4-n40-s0/point.json").stat().st_mtime_ns
    again = run_study(study, tmp_path)
    assert (tmp_path / "runs/vit-ti-4-n40-s0/point.json").stat().st_mtime_ns == stamp
    assert [p.metrics for p in again] == [p.metrics for p in points]
    # one seed: the numbers cannot separate a difference from seed noise
    assert {c.verdict for c in study_claims(study, points)} == {ONE_SEED}


def test_budget_rule_is_the_same_for_every_size() -> None:
    budget = load_study("data-size-fmnist").budget
    assert [budget.steps(n, 128) for n in (1000, 5000, 20000, 60000)] == [300, 300, 313, 938]


def test_verdicts_read_mean_and_spread() -> None:
    assert verdict([0.02, 0.03, 0.025]) == HOLDS
    assert verdict([-0.02, -0.03, -0.025]) == FAILS
    assert verdict([0.05, -0.04, 0.01]) == SPREAD_COVERS
    assert verdict([0.0, 0.0]) == FAILS  # no difference at all: the claimed difference is not there
    assert verdict([0.3]) == ONE_SEED


def test_bad_studies_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown study key"):
        study_from_dict({**tiny("data-size-fmnist"), "sizez": [1]})
    with pytest.raises(ConfigError, match="sizes"):
        study_from_dict({**tiny("data-size-fmnist"), "sizes": []})
    with pytest.raises(ConfigError, match="family"):
        study_from_dict({**tiny("scaling-fmnist"), "models": {"a": [], "b": ["model.depth=2"]}})
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset"):
        load_study("no-such-study")


def test_figure7_numbers_read_the_structure_they_name() -> None:
    import torch

    from vitlab.studies.learned import attention_numbers, similarity_numbers, uniform_attention_distance

    # Embeddings made of a row part and a column part (what the paper's Figure 7 shows): pairs in the same row
    # or column share half their embedding, so they are more similar than other pairs at the same distance.
    gh = gw = 5
    rows, cols = torch.eye(gh).repeat_interleave(gw, 0), torch.eye(gw).repeat(gh, 1)
    table = torch.nn.functional.normalize(torch.cat([rows, cols], dim=1), dim=1)
    numbers = similarity_numbers((table @ table.T).reshape(gh, gw, gh, gw))
    assert numbers["posemb_rowcol_gap"] == pytest.approx(0.5)
    assert numbers["posemb_distance_corr"] < -0.3  # -0.41: similar within rows and columns, so near
    # Random embeddings carry no such structure.
    noise = torch.nn.functional.normalize(torch.randn(gh * gw, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    assert abs(similarity_numbers((noise @ noise.T).reshape(gh, gw, gh, gw))["posemb_distance_corr"]) < 0.2
    # Distances growing by 2 px per layer, one head of layer 0 at the uniform-attention distance.
    distances = torch.tensor([[4.0, 8.0], [6.0, 10.0], [8.0, 12.0]])
    uniform = uniform_attention_distance((gh, gw), 4)
    distances[0, 1] = uniform
    out = attention_numbers(distances, (gh, gw), 4)
    assert out["attn_global_ratio"] == pytest.approx(1.0)
    assert out["attn_first_min"] == 4.0
    assert out["attn_distance_slope"] == pytest.approx((10 - (4 + uniform) / 2) / 2)  # (last - first) / 2 layers
