"""The data-size and scaling studies: nested subsets, resumable points, and the report files."""
from __future__ import annotations

import json

import pytest

from vitlab.errors import ConfigError
from vitlab.studies.study import load_study, run_study, study_from_dict

TINY = ["train.steps=2", "optim.warmup_steps=1", "train.batch_size=16", "train.checkpoint_every=0",
        "train.log_every=1", "data.eval_batch_size=512"]


def tiny_study(kind: str, **extra) -> dict:
    tree = dict(kind=kind, base="fmnist-vit-tiny", overrides=TINY,
                models={"ViT-small": ["model.depth=1", "model.width=32", "model.mlp_dim=64", "model.num_heads=2"]},
                evaluation=dict(dataset="digits", shots=[1], seeds=[0], test_limit=100))
    tree.update(extra)
    return tree


def test_data_size_study_trains_on_nested_subsets_and_reports(tmp_path) -> None:
    study = study_from_dict(tiny_study("data_size", sizes=[100, 300]))
    points = run_study(study, tmp_path)
    assert [p.size for p in points] == [100, 300]
    small = set(range(60000)) - {int(x) for x in (tmp_path / "runs/vit-small-n100/excluded.txt").read_text().split()}
    large = set(range(60000)) - {int(x) for x in (tmp_path / "runs/vit-small-n300/excluded.txt").read_text().split()}
    assert len(small) == 100 and len(large) == 300 and small <= large  # nested, as in the paper
    for name in ("study.md", "study.csv", "study.json", "study.png"):
        assert (tmp_path / name).stat().st_size > 0
    # seeded runs on Zen 5: 1-shot digits accuracy 0.30 (n=100) and 0.26 (n=300) on 100 test images; chance 0.10
    assert [p.fewshot["1-shot"] for p in points] == pytest.approx([0.30, 0.26], abs=0.08)
    # A second run reuses finished points instead of training again.
    stamp = (tmp_path / "runs/vit-small-n100/point.json").stat().st_mtime_ns
    again = run_study(study, tmp_path)
    assert (tmp_path / "runs/vit-small-n100/point.json").stat().st_mtime_ns == stamp
    assert [p.fewshot for p in again] == [p.fewshot for p in points]


def test_scaling_study_orders_points_by_compute(tmp_path) -> None:
    study = study_from_dict(tiny_study("scaling", budgets=[1, 2], sizes=[]))
    points = run_study(study, tmp_path)
    assert [p.steps for p in points] == [1, 2]
    assert points[1].pretrain_gflops == pytest.approx(2 * points[0].pretrain_gflops)
    rows = json.loads((tmp_path / "study.json").read_text())
    assert rows[0]["images_seen"] == 16


def test_bad_studies_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown study key"):
        study_from_dict({**tiny_study("data_size", sizes=[10]), "sizez": [1]})
    with pytest.raises(ConfigError, match="sizes"):
        study_from_dict(tiny_study("data_size", sizes=[]))
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset"):
        load_study("no-such-study")


def test_shipped_presets_load() -> None:
    assert load_study("data-size-fmnist").kind == "data_size"
    assert load_study("scaling-fmnist").kind == "scaling"
