"""Official files read as they are: both namings of the Flax code, (1, 1, 1, C) GroupNorm, with and without
pre-logits; anything else unreadable is one CheckpointError line and exit 2."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from small_models import small_bit, small_hybrid, small_vit
from vitlab.cli import main
from vitlab.errors import CheckpointError
from vitlab.interop.official import NAMINGS, load_npz_any, naming_of, read_npz, save_npz


def _four_d_norms(path, out):
    """The file at ``path`` with every GroupNorm scale / bias stored as [1, 1, 1, C] (published hybrids, BiT)."""
    arrays = read_npz(path)
    changed = 0
    for key, value in list(arrays.items()):
        if value.ndim == 1 and ("/gn" in key or key.startswith("gn_") or "group_norm" in key):
            arrays[key] = value.reshape(1, 1, 1, -1)
            changed += 1
    np.savez(out, **arrays)
    return changed


@pytest.mark.parametrize("build", [small_vit, lambda: small_vit("gap", representation_size=24), small_hybrid],
                         ids=["vit", "vit-gap-prelogits", "hybrid"])
def test_current_flax_naming_gives_the_published_logits(build, tmp_path):
    model = build()
    save_npz(model, tmp_path / "published.npz")
    save_npz(model, tmp_path / "current.npz", naming="current")
    current = read_npz(tmp_path / "current.npz")
    assert naming_of(current) == "current"
    assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in current
    assert "Transformer/encoderblock_0/LayerNorm_1/scale" in current
    assert not any(NAMINGS["published"]["attn"] in key for key in current)
    x = torch.randn(3, 3, 32, 32)
    want = model(x)
    for name in ("published.npz", "current.npz"):
        loaded = load_npz_any(tmp_path / name).eval()
        torch.testing.assert_close(loaded(x), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("build", [small_hybrid, small_bit], ids=["hybrid", "bit"])
def test_groupnorm_stored_as_1_1_1_C_loads(build, tmp_path):
    model = build()
    save_npz(model, tmp_path / "flat.npz")
    assert _four_d_norms(tmp_path / "flat.npz", tmp_path / "4d.npz") > 4
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_npz_any(tmp_path / "4d.npz").eval()(x), model(x), rtol=0, atol=1e-6)


def test_unreadable_files_are_one_line_and_exit_2(tmp_path, capsys):
    model = small_vit()
    save_npz(model, tmp_path / "ok.npz")
    arrays = read_npz(tmp_path / "ok.npz")
    arrays["Transformer/encoder_norm/scale"] = np.ones((2, 48), np.float32)  # not a norm's shape
    np.savez(tmp_path / "bad-shape.npz", **arrays)
    with pytest.raises(CheckpointError, match="encoder_norm/scale has shape"):
        load_npz_any(tmp_path / "bad-shape.npz")
    arrays = read_npz(tmp_path / "ok.npz")
    del arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"]
    np.savez(tmp_path / "no-mlp.npz", **arrays)
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    for name in ("bad-shape.npz", "no-mlp.npz", "junk.npz"):
        assert main(["convert", str(tmp_path / name), str(tmp_path / "out.safetensors")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and (name in err[0] or "MlpBlock_3" in err[0]), err
    assert not (tmp_path / "out.safetensors").exists()
