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
        if ".new." in str(src) and str(dst).endswith((".new.safetensors", ".new.state.safetensors")):
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


def test_a_kill_during_a_write_leaves_temp_files_that_the_next_save_removes(tmp_path, monkeypatch):
    """SIGKILL inside atomic_write leaves ``.last.new.safetensors.*.tmp``; the next checkpoint deletes it."""
    directory = CheckpointDir(tmp_path)
    _save(directory, 1)
    stale = [tmp_path / ".last.new.safetensors.abc123.tmp", tmp_path / ".last.new.state.safetensors.x9.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)  # what the kill left: a temp file no rename will ever pick up
    _save(directory, 2)
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.safetensors", "last.state.safetensors", "prev.safetensors", "prev.state.safetensors"]
    _assert_consistent(directory.load_latest(), 2)


def test_state_round_trips_exactly_without_pickle(tmp_path):
    """Every kind of value the engine saves comes back with its type, dtype and bits."""
    import random

    import numpy as np

    from vitlab.train.statefile import load_state, save_state

    random.seed(3)
    np.random.seed(4)
    adam = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3, 2))], lr=0.1)
    adam.param_groups[0]["params"][0].grad = torch.randn(3, 2)
    adam.step()
    state = {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "optimizer": adam.state_dict(), "floats": [0.1, -0.0, float("inf"), 1e-310], "big": 2**70,
        "bf16": torch.randn(4).to(torch.bfloat16), "empty": torch.zeros(0, 3), "flag": np.bool_(True),
        "view": torch.arange(10)[2:5], "nested": {3: ("a", None, [1, 2])},
    }
    save_state(state, tmp_path / "s.safetensors")
    back = load_state(tmp_path / "s.safetensors")
    random.setstate(back["python"])
    np.random.set_state(back["numpy"])
    assert back["python"] == state["python"] and isinstance(back["numpy"], tuple)
    assert np.array_equal(back["numpy"][1], state["numpy"][1]) and back["numpy"][1].dtype == np.uint32
    assert torch.equal(back["torch"], state["torch"])
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for key, value in state["optimizer"]["state"][0].items():
        assert torch.equal(back["optimizer"]["state"][0][key], value)
    assert back["floats"][:3] == [0.1, -0.0, float("inf")] and str(back["floats"][1]) == "-0.0"
    assert back["floats"][3] == 1e-310 and back["big"] == 2**70
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], state["bf16"])
    assert back["empty"].shape == (0, 3) and torch.equal(back["view"], torch.tensor([2, 3, 4]))
    assert back["flag"] is np.True_ or back["flag"] == np.bool_(True)
    assert back["nested"] == {3: ("a", None, [1, 2])}
    adam.load_state_dict(back["optimizer"])


def test_a_pickled_state_is_never_loaded(tmp_path):
    """A crafted .state.pt of an older vitlab would run code if unpickled: it is refused, not read."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    directory = CheckpointDir(tmp_path)
    (tmp_path / "last.state.pt").write_bytes(pickle.dumps({"step": 1, "x": Evil()}))
    with pytest.raises(CheckpointError, match="pickled training state"):
        directory.load_latest()
    assert not marker.exists()
