"""`vitlab demo`: every stage runs, the Table-2-style table and the report come out, re-running reuses runs.

The real demo (size `cpu`) is timed by hand (docs/demo.md); here a tiny size of the same pipeline runs in seconds.
"""
from __future__ import annotations

import json

import pytest
import torch

import vitlab
from vitlab import demo
from vitlab.errors import ConfigError

TINY_ARCH = ("model.depth=1", "model.width=32", "model.mlp_dim=64", "model.num_heads=2")


TINY_DEMO = demo.DemoSize(  # a demo that runs in seconds: 1-block models, a few steps
    pretrain="demo-cpu",
    pretrain_overrides=TINY_ARCH + ("train.steps=4", "train.batch_size=16", "optim.warmup_steps=1",
                                    "train.log_every=2", "data.eval_batch_size=500"),
    finetune="demo-cpu-transfer",
    finetune_overrides=("train.steps=3", "train.batch_size=16", "optim.warmup_steps=1", "train.log_every=1"),
    finetune_grid={"optim.lr": [0.01]},
    scratch_overrides=("optim.name=adam", "optim.weight_decay=0.05", "sweep.refit=false"),
    scratch_grid={"optim.lr": [0.001, 0.003]},
    note="test",
)


@pytest.fixture
def tiny_size(monkeypatch):
    size = TINY_DEMO
    monkeypatch.setitem(demo.SIZES, "tiny", size)
    return size


def test_transfer_configs_compare_like_with_like(tiny_size, tmp_path) -> None:
    pre_cfg = demo.pretrain_config(tiny_size)
    tuned, scratch = demo.transfer_configs(tiny_size, tmp_path / "w.safetensors", pre_cfg)
    assert tuned.model.init_from == str(tmp_path / "w.safetensors") and tuned.model.name is None
    assert scratch.model.init_from is None and scratch.model.name == pre_cfg.model.name
    assert scratch.model.overrides == pre_cfg.model.overrides  # the same architecture
    for key in ("train.steps", "train.batch_size", "data.img_size", "data.dataset", "data.dev_fraction"):
        assert tuned.get(key) == scratch.get(key), key  # the same budget and data
    assert tuned.data.img_size > pre_cfg.data.img_size  # transfer at a higher resolution
    assert tuned.optim.name == "sgd" and scratch.optim.name == "adam"


@pytest.mark.parametrize("size_name", sorted(demo.SIZES))
def test_every_size_has_valid_configs(size_name: str, tmp_path) -> None:
    """The shipped sizes (the GPU ones included) resolve to valid configs with a like-for-like comparison."""
    size = demo.SIZES[size_name]
    pre_cfg = demo.pretrain_config(size)
    tuned, scratch = demo.transfer_configs(size, tmp_path / "w.safetensors", pre_cfg)
    assert tuned.data.dataset == scratch.data.dataset == "digits"
    assert tuned.data.img_size > pre_cfg.data.img_size
    with torch.device("meta"):  # the pre-trained architecture tiles the fine-tuning resolution
        vitlab.create_model(pre_cfg.model.name, num_classes=10, img_size=tuned.data.img_size, in_chans=1,
                            **pre_cfg.model.overrides)
    assert len(size.finetune_grid["optim.lr"]) == len(size.scratch_grid["optim.lr"])  # as many tries each


def test_demo_runs_end_to_end_and_reuses_finished_runs(tiny_size, tmp_path, capsys) -> None:
    from vitlab.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "| Digits, 32 px (test top-1 %) |" in printed and "core-min" in printed
    for column in ("fine-tuned", "from scratch", "5-shot linear, pre-trained", "5-shot linear, random init"):
        assert column in printed
    for path in ("pretrain/summary.json", "finetune/summary.json", "scratch/summary.json",
                 "fewshot-pretrained.json", "fewshot-random-init.json", "demo-report.md"):
        assert (out / path).is_file(), path
    report = (out / "demo-report.md").read_text()
    assert "## Few-shot linear accuracy on digits" in report
    # the verdict follows the numbers of the same report: recompute it from the table's first two columns
    digits_row = next(line for line in report.splitlines() if line.startswith("| Digits, 32 px"))
    cells = [cell.strip() for cell in digits_row.strip("|").split("|")[1:3]]  # fine-tuned, from scratch
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [f"{100 * r['accuracy']:.2f}" for r in rows[:2]] == cells
    gap = 100 * (rows[0]["accuracy"] - rows[1]["accuracy"])
    expected = (f"Pre-training helps: fine-tuning the pre-trained ViT beats the same ViT trained from scratch by "
                f"{gap:.2f} points" if gap > 0 else f"Pre-training did NOT help here: fine-tuning is {-gap:.2f} points "
                "below training from scratch")
    assert expected in report and expected in printed
    assert ("did NOT help" in report) != ("Pre-training helps" in report)
    scratch = json.loads((out / "scratch" / "summary.json").read_text())
    assert [t["values"]["optim.lr"] for t in scratch["sweep"]["trials"]] == [0.001, 0.003]
    fewshot = json.loads((out / "fewshot-pretrained.json").read_text())
    assert [r["shots"] for r in fewshot["report"]["results"]] == [1, 5, 10, 25]

    # re-running reuses every finished stage: no training state is written again, the table is the same
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("last.state.safetensors")}
    assert len(stamps) == 4  # pre-training, one fine-tuning trial, two from-scratch trials
    first_table = printed.split("\n\n")[0]
    assert main(["demo", "--out", str(out), "--size", "tiny"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("last.state.safetensors")} == stamps
    assert capsys.readouterr().out.split("\n\n")[0] == first_table


def test_demo_refuses_to_mix_sizes_in_one_directory(tmp_path) -> None:
    (tmp_path / "demo.json").write_text(json.dumps({"size": "gpu-small"}))
    with pytest.raises(ConfigError, match="--size gpu-small"):
        demo.run_demo(tmp_path, "cpu")
    with pytest.raises(ConfigError, match="unknown"):
        demo.run_demo(tmp_path / "other", "huge")


def test_table2_layout() -> None:
    rows = [demo.Row("A", 0.9812, pretrain_minutes=10.0, transfer_minutes=1.25),
            demo.Row("B", 0.9, transfer_minutes=1.0),
            demo.Row("C", 0.5, spread=0.01, pretrain_minutes=10.0, transfer_minutes=0.04)]
    lines = demo.table2(rows, "core-min", 0.88).splitlines()
    assert lines[0] == "| | A | B | C |"
    assert lines[2] == "| Digits, 32 px (test top-1 %) | 98.12 | 90.00 | 50.00 ± 1.00 |"
    assert lines[3] == "| Fashion-MNIST, 28 px (pre-training test top-1 %) | 88.00 | - | 88.00 |"
    assert lines[4] == "| Pre-training compute (core-min) | 10.0 | - | 10.0 |"
    assert lines[5] == "| Transfer compute (core-min) | 1.2 | 1.0 | 0.0 |"
    assert "beats" in demo.verdict(rows) and "NOT" in demo.verdict(rows[::-1][1:])
