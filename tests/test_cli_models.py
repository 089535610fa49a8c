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


@pytest.mark.parametrize("name,img_size,overrides", [
    ("vit_ti16", 224, {}), ("vit_b16", 384, {}), ("vit_s32", 224, {"classifier": "gap"}),
    ("vit_b32", 224, {"representation_size": 768, "qkv_bias": False}), ("vit_ti4", 32, {"num_classes": 10}),
    ("r50_vit_b16", 224, {}), ("r50_vit_l32", 384, {}), ("vit_ti16", 64, {"hybrid_layers": ()}),
    ("bit_r50x1", 224, {}), ("bit_r101x3", 160, {}), ("bit_r152x2", 97, {"num_classes": 0}),
])
def test_analytic_counts_equal_the_built_and_traced_model(name, img_size, overrides) -> None:
    """`vitlab models` prints formulas; they must agree with the real parameters and the traced MACs."""
    from vitlab.models.counts import analytic_counts
    from vitlab.models.flops import count_macs, count_params

    classes = overrides.pop("num_classes", 1000)
    params, macs = analytic_counts(name, img_size=img_size, num_classes=classes, **overrides)
    assert params == count_params(name, img_size=img_size, num_classes=classes, **overrides)
    assert macs == count_macs(name, img_size=img_size, num_classes=classes, **overrides)


@pytest.mark.parametrize("spelling,name", [("ViT-B/16", "vit_b16"), ("R50+ViT-L/32", "r50_vit_l32"),
                                           ("BiT-R152x4", "bit_r152x4"), ("VIT_H*", "vit_h14")])
def test_models_table_matches_the_papers_names(capsys, spelling, name) -> None:
    assert main(["models", spelling]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[3:]]
    assert name in rows and (len(rows) == 1 or spelling.endswith("*"))


def test_models_table_without_a_match_is_one_line(capsys) -> None:
    assert main(["models", "ViT-Q/16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ViT-Q/16" in err


def test_models_table_does_not_import_torch() -> None:
    """What makes the table instant: no torch import (seconds on a busy machine), no model built."""
    import subprocess
    import sys

    code = ("import sys; from vitlab.cli import main; assert main(['models']) == 0; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vit_h14" in result.stdout and "bit_r200x4" in result.stdout
