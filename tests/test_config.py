"""Run configs: presets load by name, overrides are typed, bad keys and values fail with one clear line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vitlab.config import RunConfig, canonical_key, list_presets, load_config
from vitlab.errors import ConfigError

TINY = [
    "model.name=vit_ti4", "model.depth=2", "model.width=32", "model.mlp_dim=64", "model.num_heads=2",
    "data.dataset=synthetic", "data.img_size=16", "train.steps=10", "train.batch_size=8",
]


def test_every_preset_loads_and_names_its_paper_table():
    names = list_presets()
    assert {"fmnist-vit-tiny", "fmnist-vit-tiny-demo", "jft-vit-b16", "i21k-vit-b16", "imagenet-vit-b16",
            "cifar10-finetune", "imagenet-finetune"} <= set(names)
    from importlib import resources

    for name in names:
        cfg = load_config(name)
        assert cfg.train.steps or cfg.train.epochs
        text = (resources.files("vitlab.configs") / f"{name}.yaml").read_text()
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        assert "Table" in header, f"{name}: the preset must say which paper table it reproduces"


def test_overrides_are_typed_and_aliases_resolve():
    cfg = RunConfig().override(TINY + ["lr=3e-4", "optim.betas=[0.9, 0.95]", "clip_norm=null", "ema_decay=0.99",
                                       "model.drop_path=0.1", "data.options.num_samples=64"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.optim.clip_norm is None
    assert cfg.train.ema_decay == 0.99
    assert cfg.model.overrides == {"depth": 2, "width": 32, "mlp_dim": 64, "num_heads": 2, "drop_path": 0.1}
    assert cfg.data.options == {"num_samples": 64}
    assert cfg.get("lr") == pytest.approx(3e-4)
    assert canonical_key("steps") == "train.steps"
    # integers written as floats are accepted when they are whole numbers
    assert RunConfig().override(TINY + ["train.steps=1e3"]).train.steps == 1000


def test_python_mapping_and_round_trip_through_yaml(tmp_path):
    mapping = {"model.name": "vit_ti4", "model.depth": 2, "model.width": 32, "model.mlp_dim": 64,
               "model.num_heads": 2, "data.dataset": "synthetic", "data.img_size": 16, "steps": 10, "batch_size": 8}
    cfg = RunConfig().override(mapping)
    assert cfg == RunConfig().override(TINY)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg


def test_base_inheritance_changes_only_what_differs(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: fmnist-vit-tiny\noptim:\n  lr: 0.0123\n")
    parent = load_config("fmnist-vit-tiny")
    cfg = load_config(child)
    assert cfg.optim.lr == 0.0123
    assert cfg.model == parent.model and cfg.train == parent.train


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("foo=1", "foo"),
        ("optim.lr=-0.1", "optim.lr"),
        ("optim.lr=abc", "optim.lr"),
        ("optim.name=rmsprop", "optim.name"),
        ("data.img_size=30", "data.img_size"),
        ("model.bogus=3", "bogus"),
        ("train.micro_batch_size=3", "micro_batch_size"),
        ("train.label_smoothing=1.5", "label_smoothing"),
        ("model.num_classes=5", "model.num_classes"),
        ("model.name=vit_q16", "vit_q16"),
        ("dropout=0.1", "model.dropout"),  # model fields need the model. prefix
    ],
)
def test_bad_values_raise_config_error_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        RunConfig().override(TINY + [override])
    assert fragment in str(info.value)


def test_accumulation_steps_make_the_effective_batch():
    cfg = RunConfig().override(TINY + ["train.batch_size=4096", "train.micro_batch_size=128"])
    assert cfg.accumulation_steps(world_size=1) == 32
    assert cfg.accumulation_steps(world_size=8) == 4
    with pytest.raises(ConfigError, match="micro_batch_size"):
        cfg.accumulation_steps(world_size=3)
    assert RunConfig().override(TINY + ["train.batch_size=512"]).accumulation_steps(world_size=4) == 1


def test_sweep_values_are_validated():
    with pytest.raises(ConfigError):
        RunConfig().override(TINY + ["sweep.grid.lr=[0.01, -1]"])
    cfg = RunConfig().override(TINY + ["sweep.grid.lr=0.001,0.003"])
    assert cfg.sweep.grid == {"lr": [0.001, 0.003]}


def test_cli_bad_configs_exit_2_with_one_line(tmp_path, capsys):
    """The issue's three cases: unknown key, negative lr, image size not divisible by the patch."""
    from vitlab.cli import main

    for bad in ("optim.lrr=0.1", "optim.lr=-0.001", "data.img_size=30"):
        status = main(["pretrain", "--config", "fmnist-vit-tiny", bad, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert status == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert bad.split("=")[0] in lines[0]
    assert not (tmp_path / "run").exists()
    # and through a real process, for the exit status itself
    result = subprocess.run([sys.executable, "-m", "vitlab", "pretrain", "--config", "fmnist-vit-tiny",
                             "optim.lr=-1", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
