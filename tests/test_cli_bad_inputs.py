"""Every bad input a user can give the CLI: exit 2, one line on stderr, no traceback, nothing left under --out.

Each row runs ``python -m vitlab ...`` in a subprocess, as a user would. Rows that leave a run directory
behind would make the corrected command fail ("already holds a sweep"), so some rows then run the corrected
command on the same ``--out`` and expect it to work.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import vitlab
from vitlab.interop import official
from train_helpers import run, tiny_tree, vitlab_cmd, write_config

UNCREATABLE = "/dev/null/x/run"  # a path under a character device: no directory can ever be made there


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A good tiny checkpoint in both formats and the broken .npz files of the table."""
    root = tmp_path_factory.mktemp("inputs")
    model = vitlab.create_model("vit_ti4", num_classes=4, img_size=16, depth=2, width=32, mlp_dim=64, num_heads=2)
    good_npz, good_st = root / "good.npz", root / "good.safetensors"
    official.save_npz(model, good_npz)
    vitlab.save_model(model, good_st)
    data = good_npz.read_bytes()
    (root / "truncated.npz").write_bytes(data[: len(data) // 2])
    garbled = bytearray(data)
    middle = len(garbled) // 2
    garbled[middle: middle + 4096] = os.urandom(4096)
    (root / "corrupt.npz").write_bytes(bytes(garbled))
    (root / "random.npz").write_bytes(np.random.default_rng(0).bytes(10_000))
    with np.load(good_npz) as archive:
        arrays = {k: archive[k] for k in archive.files if "encoderblock_0/MlpBlock" not in k}
    np.savez(root / "no_mlp.npz", **arrays)
    assert zipfile.is_zipfile(root / "no_mlp.npz")
    (root / "empty_images").mkdir()
    (root / "empty_images" / "cat").mkdir()
    return {"good.npz": good_npz, "good.safetensors": good_st, "root": root,
            **{name: root / f"{name}.npz" for name in ("truncated", "corrupt", "random", "no_mlp")}}


def _config(files, tmp_path: Path, **sections) -> Path:
    tree = tiny_tree(**sections)
    tree["train"].update(steps=4, log_every=2, checkpoint_every=0)
    tree["optim"].update(warmup_steps=1)
    return write_config(tmp_path / "cfg.yaml", tree)


def _finetune_tree(files, init_from: str, **data) -> dict:
    return {"model": {"init_from": init_from}, "data": data} if data else {"model": {"init_from": init_from}}


def _listing(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {str(p.relative_to(path)) for p in path.rglob("*")} | {"."}


def _assert_one_line_exit_2(result, *must_name: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    assert len(err.splitlines()) == 1, err
    for name in must_name:
        assert name in err, (name, err)
    return err


BAD_NPZ = ["truncated", "corrupt", "random", "no_mlp"]


@pytest.mark.parametrize("bad", BAD_NPZ)
def test_convert_bad_npz(files, tmp_path, bad) -> None:
    out = tmp_path / "out"
    err = _assert_one_line_exit_2(run(vitlab_cmd("convert", str(files[bad]), str(out / "m.safetensors"))),
                                  files[bad].name)
    assert "allow_pickle" not in err
    assert not out.exists()


@pytest.mark.parametrize("bad", BAD_NPZ)
def test_eval_bad_npz(files, tmp_path, bad) -> None:
    out = tmp_path / "out"
    result = run(vitlab_cmd("eval", str(files[bad]), "--dataset", "synthetic", "-o", "num_samples=32",
                            "-o", "img_size=16", "-o", "num_classes=4", "--out", str(out)))
    err = _assert_one_line_exit_2(result, files[bad].name)
    assert "allow_pickle" not in err
    assert not out.exists()


@pytest.mark.parametrize("bad", ["truncated", "random", "no_mlp", "absent"])
def test_finetune_bad_init_from_leaves_no_debris(files, tmp_path, bad) -> None:
    out = tmp_path / "run"
    init = str(files[bad]) if bad != "absent" else str(tmp_path / "absent.safetensors")
    config = _config(files, tmp_path, model={"init_from": init})
    result = run(vitlab_cmd("finetune", "--config", str(config), "--out", str(out), "--sweep", "none"))
    _assert_one_line_exit_2(result, Path(init).name)
    assert _listing(out) == set()
    fixed = run(vitlab_cmd("finetune", "--config", str(config), f"model.init_from={files['good.safetensors']}",
                           "--out", str(out), "--sweep", "none"))
    assert fixed.returncode == 0, fixed.stderr[-2000:]


@pytest.mark.parametrize("command", ["pretrain", "convert", "eval"])
def test_uncreatable_out(files, tmp_path, command) -> None:
    if command == "pretrain":
        args = ["pretrain", "--config", str(_config(files, tmp_path)), "--out", UNCREATABLE]
    elif command == "convert":
        args = ["convert", str(files["good.npz"]), UNCREATABLE + "/m.safetensors"]
    else:
        # 20,000 images: if the evaluation ran before --out is checked, the test would see its log line
        args = ["eval", str(files["good.safetensors"]), "--dataset", "synthetic", "-o", "num_samples=20000",
                "-o", "img_size=16", "-o", "num_classes=4", "--out", UNCREATABLE]
    result = run(vitlab_cmd(*args))
    _assert_one_line_exit_2(result, "/dev/null/x")
    assert "accuracy" not in result.stderr + result.stdout


def test_sweep_data_error_leaves_no_debris_and_the_fix_runs(files, tmp_path) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")  # a file the user had there stays
    before = _listing(out)
    config = _config(files, tmp_path, model={"init_from": str(files["good.safetensors"])},
                     data={"dataset": "image_folder", "options": {"root": str(files["root"] / "empty_images")}})
    result = run(vitlab_cmd("finetune", "--config", str(config), "--out", str(out), "--sweep", "lr=0.01,0.03"))
    _assert_one_line_exit_2(result, "empty_images")
    assert _listing(out) == before
    fixed = run(vitlab_cmd("finetune", "--config", str(_config(files, tmp_path,
                                                               model={"init_from": str(files["good.safetensors"])})),
                           "--out", str(out), "--sweep", "lr=0.01,0.03"))
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert (out / "notes.txt").read_text() == "mine\n"


def test_pretrain_on_an_image_folder_without_images(files, tmp_path) -> None:
    out = tmp_path / "run"
    config = _config(files, tmp_path,
                     data={"dataset": "image_folder", "options": {"root": str(files["root"] / "empty_images")}})
    _assert_one_line_exit_2(run(vitlab_cmd("pretrain", "--config", str(config), "--out", str(out))), "empty_images")
    assert _listing(out) == set()
