"""A run says where its TensorBoard logs are (or that tensorboard is missing, and how to get it) without -v."""
from __future__ import annotations

import logging
import sys

from train_helpers import tiny_config

from vitlab.train import pretrain


def _short():
    return tiny_config(train={"steps": 2, "checkpoint_every": 0, "log_every": 1}, optim={"warmup_steps": 1})


def test_a_run_names_its_tensorboard_folder_at_info_level(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="vitlab"):
        pretrain(_short(), tmp_path / "run")
    assert f"tensorboard --logdir {tmp_path / 'run' / 'tensorboard'}" in caplog.text
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_without_tensorboard_the_run_says_how_to_install_it(tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with caplog.at_level(logging.INFO, logger="vitlab"):
        pretrain(_short(), tmp_path / "run")
    assert "pip install 'vitlab[tensorboard]'" in caplog.text and "metrics.jsonl" in caplog.text


def test_make_setup_installs_tensorboard() -> None:
    """`make demo` and `make test` run `setup`, which must install the tensorboard extra the runs advertise."""
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    install = [line for line in makefile.splitlines() if "pip install" in line and "-e " in line]
    assert install and all("tensorboard" in line for line in install), install
