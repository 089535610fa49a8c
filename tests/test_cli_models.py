"""The `vitlab` command line: the models table, conversions, and exit status 2 with one line on bad input."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.cli import main
from vitlab.interop import official


def test_models_table_lists_params_and_gmacs(capsys) -> None:
    assert main(["models", "vit_b16"]) == 0
    out = capsys.readouterr().out
    assert "vit_b16" in out and "86.57" in out and "17.56" in out


def test_models_table_at_another_resolution(capsys) -> None:
    assert main(["models", "vit_b16", "--img-size", "384"]) == 0
    assert "86.86" in capsys.readouterr().out  # 24x24 grid: 576 + 1 position embeddings


def test_convert_between_npz_and_safetensors(tmp_path, capsys) -> None:
    model = vitlab.create_model("vit_ti8", num_classes=3, img_size=32, depth=1).eval()
    npz = tmp_path / "m.npz"
    official.save_npz(model, npz)
    out = tmp_path / "m.safetensors"
    assert main(["convert", str(npz), str(out)]) == 0
    back = tmp_path / "back.npz"
    assert main(["convert", str(out), str(back)]) == 0
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(official.load_npz_any(back)(x), model(x))


def test_bad_input_exits_2_with_one_line(tmp_path, capsys) -> None:
    assert main(["convert", str(tmp_path / "absent.npz"), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "absent.npz" in err


def test_unknown_command_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
