"""The paper presets say what Tables 3 and 4 say (the tables live once, in vitlab.train.recipes)."""
from __future__ import annotations

import pytest

from vitlab.config import list_presets, load_config
from vitlab.train import recipes


def _preset(dataset: str, model: str) -> str:
    return f"{'i21k' if dataset == 'imagenet21k' else dataset}-{model.replace('_', '-')}"


def test_table3_pretraining_presets():
    checked = 0
    for (dataset, model), row in recipes.PRETRAIN.items():
        name = _preset(dataset, model)
        if name not in list_presets():
            continue
        cfg = load_config(name)
        assert cfg.model.name == model, name
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", row.lr, row.weight_decay), name
        assert (cfg.optim.schedule, cfg.optim.end_lr, cfg.optim.warmup_steps) == (
            row.schedule, row.end_lr, row.warmup_steps), name
        assert tuple(cfg.optim.betas) == row.betas and cfg.optim.clip_norm == row.clip_norm, name
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.loss) == (row.epochs, row.batch_size, row.loss)
        assert getattr(cfg.model.spec, "dropout", 0.0) == row.dropout, name  # BiT has no dropout
        assert cfg.data.img_size == row.img_size and cfg.data.augment == "paper", name
        checked += 1
    assert checked >= 13


@pytest.mark.parametrize("dataset", sorted(recipes.FINETUNE))
def test_table4_finetuning_presets(dataset):
    row = recipes.FINETUNE[dataset]
    cfg = load_config(f"{dataset}-finetune")
    assert cfg.task == "finetune" and cfg.train.steps == row.steps and cfg.train.batch_size == row.batch_size
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", row.momentum, row.weight_decay)
    assert (cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.clip_norm) == (
        row.schedule, row.warmup_steps, row.clip_norm)
    assert cfg.data.img_size == row.img_size
    if len(row.lrs) > 1:
        assert cfg.sweep.grid == {"optim.lr": list(row.lrs)}
    else:
        assert cfg.sweep.grid == {} and cfg.optim.lr == row.lrs[0]
    assert recipes.dev_fraction(dataset) == recipes.DEV_FRACTION.get(dataset, 0.1)
