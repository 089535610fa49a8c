"""Our safetensors format, weight checks, and the fine-tuning transfer of Section 3.2."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.errors import CheckpointError
from vitlab.interop import official
from vitlab.models.weights import load_weights
from vitlab.weights import resolve

from conftest import jitter_


def tiny(**overrides) -> torch.nn.Module:
    options = dict(num_classes=4, img_size=32, depth=2)
    options.update(overrides)
    return jitter_(vitlab.create_model("vit_ti8", **options)).eval()


def test_save_and_load_round_trip_rebuilds_config(tmp_path) -> None:
    model = tiny(classifier="gap", posemb="learned_2d", representation_size=16)
    path = tmp_path / "m.safetensors"
    vitlab.save_model(model, path)
    loaded = vitlab.load_model(path).eval()
    assert loaded.config == model.config
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_load_weights_names_missing_unexpected_and_misshaped() -> None:
    model = tiny()
    state = dict(tiny().state_dict())
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(9, 192)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, state, source="x.safetensors")
    message = str(info.value)
    assert "x.safetensors" in message and "missing keys: norm.weight" in message
    assert "unexpected keys: extra.weight" in message and "head.weight (file (9, 192), model (4, 192))" in message


def test_nan_weights_are_refused() -> None:
    state = dict(tiny().state_dict())
    state["blocks.0.mlp.fc1.weight"] = state["blocks.0.mlp.fc1.weight"].clone()
    state["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN.*blocks.0.mlp.fc1.weight"):
        load_weights(tiny(), state)


def test_corrupt_and_foreign_files_are_reported(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    vitlab.save_model(tiny(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="m.safetensors"):
        vitlab.load_model(path)
    with pytest.raises(CheckpointError, match="no such weights file"):
        vitlab.load_model(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_transfer_build_new_zero_head_no_pre_logits_new_resolution(tmp_path, suffix: str) -> None:
    source = tiny(representation_size=16)
    path = tmp_path / f"pre{suffix}"
    if suffix == ".npz":
        official.save_npz(source, path)
    else:
        vitlab.save_model(source, path)
    model = resolve(path).build(num_classes=10, img_size=48)
    assert isinstance(model.pre_logits, torch.nn.Identity)
    assert model.head.weight.shape == (10, 192) and not model.head.weight.any()
    assert model.pos_embed.weight.shape == (1, 1 + 36, 192)
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)
