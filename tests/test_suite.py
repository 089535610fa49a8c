"""The VTAB-style suite: parsing, the grouped table, the shipped suite, and a minimal end-to-end run (seconds)."""
from __future__ import annotations

import json

import pytest
import yaml

import vitlab
from vitlab.errors import ConfigError
from vitlab.evaluate.suite import (
    FewShotSpec,
    Suite,
    Task,
    TaskResult,
    finetune_config,
    grouped_table,
    list_suites,
    load_suite,
    suite_from_dict,
)


def test_shipped_small_suite_is_vtab_shaped() -> None:
    assert "small" in list_suites()
    suite = load_suite("small")
    assert suite.train_examples == 1000  # VTAB-1k
    assert suite.groups == ["natural", "structured"]
    assert {t.source for t in suite.tasks if t.group == "natural"} == {"fashion_mnist", "digits"}
    assert {t.source for t in suite.tasks if t.group == "structured"} == {
        "sprites_position", "sprites_count", "sprites_orientation"}
    # its fine-tuning is the paper's VTAB setting (lr 0.01, SGD, no sweep), scaled down in steps and size
    cfg = finetune_config(suite, suite.tasks[1], checkpoint="ckpt.safetensors", model_name=None, in_chans=1)
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.01 and cfg.sweep.grid == {}
    assert cfg.data.dataset == "subset" and cfg.data.options["source"] == "digits"
    assert cfg.data.options["size"] == 1000 and cfg.data.img_size == 32 and cfg.data.augment == "none"
    assert cfg.model.init_from == "ckpt.safetensors"
    # user overrides come last; a bad one is a ConfigError
    assert finetune_config(suite, suite.tasks[0], checkpoint="c", model_name=None, in_chans=1,
                           overrides=["train.steps=70"]).train.steps == 70
    with pytest.raises(ConfigError):
        finetune_config(suite, suite.tasks[0], checkpoint="c", model_name=None, in_chans=1,
                        overrides=["train.stepz=7"])


def test_bad_suites_name_the_problem(tmp_path) -> None:
    with pytest.raises(ConfigError, match="tasks"):
        suite_from_dict({"name": "x", "tasks": []})
    with pytest.raises(ConfigError, match="needs name, group and source"):
        suite_from_dict({"tasks": [{"name": "a", "source": "digits"}]})
    with pytest.raises(ConfigError, match="unknown key"):
        suite_from_dict({"tasks": [{"name": "a", "group": "g", "source": "digits"}], "epochs": 3})
    with pytest.raises(ConfigError, match="unique"):
        suite_from_dict({"tasks": [{"name": "a", "group": "g", "source": "digits"}] * 2})
    with pytest.raises(ConfigError, match="neither a file nor a packaged suite"):
        load_suite("no-such-suite")


def test_grouped_table_means_per_group_and_over_tasks() -> None:
    suite = Suite("t", [Task("a", "natural", "x"), Task("b", "natural", "x"), Task("c", "structured", "x")],
                  fewshot=FewShotSpec(shots=[5]))
    results = [TaskResult("a", "natural", 0.9, {5: 0.5}), TaskResult("b", "natural", 0.7, {5: 0.3}),
               TaskResult("c", "structured", 0.4, {5: 0.2})]
    lines = grouped_table(suite, results).splitlines()
    assert lines[0] == "| task | group | fine-tune | 5-shot |"
    assert "| **natural mean** (2 tasks) | natural | 80.0 | 40.0 |" in lines
    assert "| **structured mean** (1 tasks) | structured | 40.0 | 20.0 |" in lines
    # VTAB's mean is over tasks, not over groups: (90 + 70 + 40) / 3
    assert lines[-1] == "| **mean** (3 tasks) | all | 66.7 | 33.3 |"
    only_fewshot = grouped_table(suite, results, modes=("fewshot",)).splitlines()[0]
    assert only_fewshot == "| task | group | 5-shot |"


def minimal_suite(tmp_path):
    """Two tiny tasks, one per group, a tiny fine-tuning budget: the whole suite runs in seconds."""
    tree = {
        "name": "mini",
        "train_examples": 40,
        "test_examples": 30,
        "img_size": 16,
        "tasks": [
            {"name": "patterns", "group": "natural", "source": "synthetic",
             "options": {"num_samples": 80, "num_classes": 4, "img_size": 16, "channels": 1}},
            {"name": "where", "group": "structured", "source": "sprites_position",
             "options": {"num_examples": 60, "size": 16, "bins": 2}},
        ],
        "finetune": {"config": "vtab-finetune", "overrides": {
            "train.steps": 3, "train.batch_size": 8, "train.micro_batch_size": None, "optim.warmup_steps": 1,
            "data.augment": "none", "data.num_workers": 0, "train.log_every": 1, "data.eval_batch_size": 32}},
        "fewshot": {"shots": [1, 2], "seeds": [0, 1]},
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(tree))
    model = vitlab.create_model("vit_ti4", num_classes=5, img_size=16, in_chans=1, depth=1, width=32, mlp_dim=64,
                                num_heads=2)
    weights = tmp_path / "tiny.safetensors"
    vitlab.save_model(model, weights)
    return path, weights


def test_minimal_suite_end_to_end_through_the_cli(tmp_path, capsys) -> None:
    from vitlab.cli import main

    suite_path, weights = minimal_suite(tmp_path)
    out = tmp_path / "out"
    code = main(["suite", "--suite", str(suite_path), "--checkpoint", str(weights), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("| patterns | natural |", "| where | structured |", "**natural mean**", "**structured mean**",
                "**mean** (2 tasks)"):
        assert row in printed
    report = json.loads((out / "suite.json").read_text())
    by_task = {r["task"]: r for r in report["results"]}
    assert set(by_task) == {"patterns", "where"}
    for name, r in by_task.items():
        # the suite reports the test accuracy of the task's own fine-tuning run, not another number
        run_summary = json.loads((out / name / "finetune" / "summary.json").read_text())
        assert r["finetune_accuracy"] == run_summary["metrics"]["test_accuracy"]
        assert set(r["fewshot"]) == {"1", "2"}
    # seeded runs on Zen 5 (3 steps from a random init, 30 test images, so near chance): patterns 0.30 (4 classes,
    # chance 0.25), where 0.567 (2 bins, chance 0.5); the band is 3 test images either way
    assert by_task["patterns"]["finetune_accuracy"] == pytest.approx(0.30, abs=0.1)
    assert by_task["where"]["finetune_accuracy"] == pytest.approx(0.567, abs=0.1)
    # the fine-tuning run trained on the 40-example subset and was scored on the capped test set
    summary = json.loads((out / "patterns" / "finetune" / "summary.json").read_text())
    assert summary["train_images"] == 40 and summary["steps"] == 3
    assert (out / "suite-report.md").read_text().count("| patterns |") == 1
    # re-running reuses the finished runs and cached few-shot results: same numbers
    assert main(["suite", "--suite", str(suite_path), "--checkpoint", str(weights), "--out", str(out)]) == 0
    again = json.loads((out / "suite.json").read_text())
    assert [r["finetune_accuracy"] for r in again["results"]] == [r["finetune_accuracy"] for r in report["results"]]
    # a bad override or task name is one line and exit status 2
    capsys.readouterr()
    assert main(["suite", "--suite", str(suite_path), "--checkpoint", str(weights), "--out", str(out),
                 "--tasks", "nope"]) == 2
    assert "no task(s) nope" in capsys.readouterr().err


def test_rerunning_one_task_keeps_the_others_and_a_changed_config_gets_suite_advice(tmp_path, capsys) -> None:
    from vitlab.cli import main

    suite_path, weights = minimal_suite(tmp_path)
    out = tmp_path / "out"
    base = ["suite", "--suite", str(suite_path), "--checkpoint", str(weights), "--out", str(out), "--mode",
            "finetune"]
    assert main(base) == 0
    first = json.loads((out / "suite.json").read_text())
    assert first["settings"]["checkpoint"] == str(weights) and first["settings"]["overrides"] == []
    assert main(base + ["--tasks", "where"]) == 0  # rerun one task: the report still holds both
    report = (out / "suite-report.md").read_text()
    assert "| patterns |" in report and "| where |" in report and "**mean** (2 tasks)" in report
    assert str(weights) in report  # the report says which checkpoint made it
    capsys.readouterr()
    # the same --out with another fine-tuning setting: advice that fits `suite` (it takes no --config)
    assert main(base + ["--tasks", "where", "train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "suite task where" in err and "omit --config" not in err
    assert "another --out" in err
