"""Checkpoints: a kill at any point of a write leaves a usable pair; a corrupt one is reported and skipped."""
from __future__ import annotations

import logging
import os

import pytest
import torch

import vitlab
from vitlab.errors import CheckpointError
from vitlab.train import checkpoint as ckpt_module
from vitlab.train.checkpoint import CheckpointDir


def _model(fill: float):
    model = vitlab.create_model("vit_ti4", num_classes=3, img_size=8, depth=1, width=16, mlp_dim=32, num_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(fill)
    return model


def _save(directory: CheckpointDir, step: int) -> None:
    directory.save(_model(float(step)), {"step": step, "payload": step * 10})


def _assert_consistent(loaded, step: int) -> None:
    assert loaded.state["step"] == step and loaded.state["payload"] == step * 10
    assert float(loaded.weights["head.weight"].flatten()[0]) == float(step)


def test_save_keeps_the_previous_checkpoint(tmp_path):
    directory = CheckpointDir(tmp_path)
    _save(directory, 1)
    _save(directory, 2)
    assert directory.weights("last").exists() and directory.weights("prev").exists()
    loaded = directory.load_latest()
    _assert_consistent(loaded, 2)
    assert loaded.skipped == []
    assert vitlab.load_model(directory.weights("last")) is not None  # the weights file is a normal model file


@pytest.mark.parametrize("damage", ["truncate_weights", "garble_weights", "truncate_state", "delete_weights"])
def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path, damage, caplog):
    directory = CheckpointDir(tmp_path)
    _save(directory, 1)
    _save(directory, 2)
    weights, state = directory.weights("last"), directory.state("last")
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garble_weights":
        data = bytearray(weights.read_bytes())
        data[-20:] = b"\x00" * 20
        weights.write_bytes(bytes(data))
    elif damage == "truncate_state":
        state.write_bytes(state.read_bytes()[:100])
    else:
        weights.unlink()
    with caplog.at_level(logging.WARNING):
        loaded = directory.load_latest()
    _assert_consistent(loaded, 1)
    assert loaded.skipped, "the unusable checkpoint must be reported"
    assert "previous good checkpoint" in caplog.text


def test_no_usable_checkpoint_is_an_error(tmp_path):
    directory = CheckpointDir(tmp_path)
    _save(directory, 1)
    directory.state("last").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        directory.load_latest()
    assert CheckpointDir(tmp_path / "empty").load_latest() is None


@pytest.mark.parametrize("renames_done", [0, 1, 2, 3])
def test_a_kill_between_the_renames_leaves_a_consistent_pair(tmp_path, monkeypatch, renames_done):
    """Simulate SIGKILL after each of the four renames of a save: some complete pair always loads."""
    directory = CheckpointDir(tmp_path)
    _save(directory, 1)
    _save(directory, 2)
    real_replace = os.replace
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def replace(src, dst):
        # atomic_write's own temp->final renames are part of writing the .new files; count only the rotation
        if ".new." in str(src) and str(dst).endswith((".new.safetensors", ".new.state.pt")):
            return real_replace(src, dst)
        if calls["n"] == renames_done:
            raise Killed()
        calls["n"] += 1
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_module.os, "replace", replace)
    with pytest.raises(Killed):
        _save(directory, 3)
    monkeypatch.setattr(ckpt_module.os, "replace", real_replace)
    loaded = directory.load_latest()
    assert loaded.state["step"] in (2, 3)
    _assert_consistent(loaded, loaded.state["step"])
    assert loaded.state["step"] == 3  # the .new pair was complete before any rename
