"""vitlab.weights.resolve: one test per kind of reference, the timm conversion cache, and the errors."""
from __future__ import annotations

import os

import pytest
import torch

import vitlab
from vitlab.errors import CheckpointError
from vitlab.interop import official
from vitlab.weights import WeightsRef, kind_of, resolve
from vitlab.weights.cache import cache_dir

from conftest import jitter_


def tiny(**overrides) -> torch.nn.Module:
    fields = dict(num_classes=3, img_size=16, depth=2, width=32, mlp_dim=64, num_heads=2)
    fields.update(overrides)
    return jitter_(vitlab.create_model("vit_ti4", **fields)).eval()


def same_logits(a: torch.nn.Module, b: torch.nn.Module, size: int, in_chans: int = 3) -> None:
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), atol=1e-5, rtol=1e-5)


def test_safetensors_reports_the_spec_before_reading_tensors_and_builds_both_ways(tmp_path) -> None:
    model = tiny(in_chans=1)
    path = tmp_path / "m.safetensors"
    vitlab.save_model(model, path, classes=["a", "b", "c"])
    ref = resolve(path)
    assert isinstance(ref, WeightsRef)
    assert (ref.kind, ref.family, ref.in_chans, ref.img_size) == ("safetensors", "vit", 1, (16, 16))
    assert ref.classes == ("a", "b", "c") and ref.path == path
    assert ref.preprocessing == {"img_size": [16, 16], "resize": "bilinear", "mean": [0.5], "std": [0.5],
                                 "channels": 1, "in_chans": 1}  # vitlab's [-1, 1] scaling, one channel
    assert ref.config["depth"] == 2 and ref.config["width"] == 32
    same_logits(ref.build(), model, 16, in_chans=1)
    tuned = ref.build(num_classes=5, img_size=24)  # the transfer start: zero head, 6x6 grid
    assert tuned.head.weight.shape == (5, 32) and not tuned.head.weight.any()
    assert tuned.pos_embed.weight.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(tuned.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)


def test_run_directory_prefers_best_then_last(tmp_path) -> None:
    best, last = tiny(), tiny(num_classes=4)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    vitlab.save_model(last, tmp_path / "run" / "checkpoints" / "last.safetensors")
    ref = resolve(tmp_path / "run")
    assert ref.kind == "run_dir" and ref.path.name == "last.safetensors" and ref.classes == 4
    vitlab.save_model(best, tmp_path / "run" / "checkpoints" / "best.safetensors")
    ref = resolve(str(tmp_path / "run"))
    assert ref.path.name == "best.safetensors" and ref.classes == 3
    same_logits(ref.build(), best, 16)


def test_official_npz_reads_the_architecture_off_its_keys(tmp_path) -> None:
    model = tiny(in_chans=1, representation_size=16)
    official.save_npz(model, tmp_path / "official.npz")
    ref = resolve(tmp_path / "official.npz")
    assert (ref.kind, ref.family, ref.in_chans, ref.img_size, ref.classes) == ("npz", "vit", 1, (16, 16), 3)
    assert ref.config["representation_size"] == 16 and ref.config["depth"] == 2
    same_logits(ref.build(), model, 16, in_chans=1)
    tuned = ref.build(num_classes=2)
    assert isinstance(tuned.pre_logits, torch.nn.Identity) and tuned.head.weight.shape == (2, 32)
    # Without its suffix the file is recognised by its bytes (a zip archive).
    os.replace(tmp_path / "official.npz", tmp_path / "official.weights")
    assert kind_of(tmp_path / "official.weights") == "npz"


@pytest.fixture
def timm_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    # timm's test_vit: a registered 0.4M-parameter ViT (6 blocks of width 64 at 160 px), fast on a CPU.
    timm_model = jitter_(timm.create_model("test_vit", pretrained=False, num_classes=5)).eval()
    path = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(path))
    return timm_model, path


def test_timm_reference_matches_timm_and_its_conversion_is_cached_once(timm_file, monkeypatch) -> None:
    import timm

    timm_model, path = timm_file
    ref = resolve(f"timm:test_vit@{path}")
    assert (ref.kind, ref.family, ref.in_chans, ref.img_size, ref.classes) == ("timm", "vit", 3, (160, 160), 5)
    assert ref.preprocessing["resize"] == "bicubic" and ref.preprocessing["img_size"] == [160, 160]  # timm's cfg
    assert ref.preprocessing["crop_pct"] == timm_model.pretrained_cfg["crop_pct"]
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(ref.build().eval()(x), timm_model(x), atol=2e-5, rtol=1e-4)
    entries = sorted((cache_dir() / "timm").iterdir())
    assert [p.suffix for p in entries] == [".safetensors"] and ref.path == entries[0]
    stamp = entries[0].stat().st_mtime_ns

    def no_timm(*args, **kwargs):
        raise AssertionError("the second resolve must not build the timm model again")

    monkeypatch.setattr(timm, "create_model", no_timm)
    again = resolve(f"timm:test_vit@{path}")
    assert again.path == ref.path and again.config == ref.config
    assert sorted((cache_dir() / "timm").iterdir()) == entries and entries[0].stat().st_mtime_ns == stamp
    assert not [p for p in cache_dir().rglob("*") if p.name.endswith(".tmp")]  # no debris from the writes


def test_timm_weights_that_do_not_fit_the_name_are_one_line(timm_file) -> None:
    _, path = timm_file
    with pytest.raises(CheckpointError, match=r"timm:vit_tiny_patch16_224@.*timm could not load it \(.*(Missing|size mismatch)") as error:
        resolve(f"timm:vit_tiny_patch16_224@{path}")  # test_vit's weights under another architecture's name
    assert "\n" not in str(error.value)
    assert not (cache_dir() / "timm").exists() or not list((cache_dir() / "timm").iterdir())  # nothing cached


def test_timm_cache_key_follows_the_weights_content(timm_file) -> None:
    timm_model, path = timm_file
    first = resolve(f"timm:test_vit@{path}").path
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in timm_model.state_dict().items()}
    state["head.bias"] = state["head.bias"] + 1.0  # same name, other weights: another entry
    save_file(state, str(path))
    second = resolve(f"timm:test_vit@{path}")
    assert second.path != first and len(list((cache_dir() / "timm").iterdir())) == 2
    torch.testing.assert_close(second.build().head.bias, state["head.bias"])


def test_hf_reference_from_a_local_directory(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=16, patch_size=4, num_channels=3,
                                    num_labels=3, id2label={0: "cat", 1: "dog", 2: "owl"},
                                    label2id={"cat": 0, "dog": 1, "owl": 2})
    hf_model = jitter_(transformers.ViTForImageClassification(config)).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    ref = resolve(f"hf:{tmp_path / 'hf'}")
    assert (ref.kind, ref.family, ref.in_chans, ref.img_size) == ("hf", "vit", 3, (16, 16))
    assert ref.classes == ("cat", "dog", "owl") and ref.path is None
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ref.build().eval()(x), hf_model(pixel_values=x).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make, ref, message", [
    (None, "absent.safetensors", "no such file or directory"),
    ("junk", "weights.pt", "not a weights file vitlab reads"),
    ("emptydir", "run", "a directory without checkpoints/best.safetensors"),
    ("garbled", "bad.safetensors", "not a readable safetensors file"),
    ("garbled", "bad.npz", "not a readable .npz"),
    (None, "timm:", "give a timm model name"),
    (None, "timm:vit_tiny_patch16_224@/nonexistent/file.safetensors", "no such weights file"),
])
def test_bad_references_are_one_line_errors_naming_the_ref(tmp_path, monkeypatch, make, ref, message) -> None:
    monkeypatch.chdir(tmp_path)
    if make == "junk":
        (tmp_path / ref).write_bytes(b"\x80\x04 not a known format")
    elif make == "emptydir":
        (tmp_path / ref).mkdir()
    elif make == "garbled":
        (tmp_path / ref).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage" if ref.endswith("safetensors")
                                     else b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match=message) as error:
        resolve(ref)
    text = str(error.value)
    assert "\n" not in text and ref.split("@")[0] in text


def test_a_safetensors_file_not_written_by_vitlab_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="foreign.safetensors.*no vitlab config"):
        resolve(tmp_path / "foreign.safetensors")


def test_evaluate_checkpoint_takes_any_reference(tmp_path) -> None:
    """`vitlab eval` reads references through the resolver: an official .npz works like our files."""
    from vitlab.train.evaluation import evaluate_checkpoint

    model = tiny(num_classes=10, in_chans=1)
    vitlab.save_model(model, tmp_path / "m.safetensors")
    official.save_npz(model, tmp_path / "m.npz")
    results = [evaluate_checkpoint(tmp_path / name, "synthetic", split="test", img_size=16,
                                   source_options={"num_samples": 64, "img_size": 16, "channels": 1})
               for name in ("m.safetensors", "m.npz")]
    assert results[0]["num_examples"] == 64 and results[1]["checkpoint"].endswith("m.npz")
    assert results[0]["accuracy"] == pytest.approx(results[1]["accuracy"], abs=1 / 64)


def test_commands_take_references_through_the_resolver(tmp_path, capsys) -> None:
    """`vitlab convert` reads a run directory; a bad reference is exit status 2 with one line naming it."""
    from vitlab.cli import main

    model = tiny()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    vitlab.save_model(model, tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "out.npz")]) == 0
    same_logits(official.load_npz_any(tmp_path / "out.npz"), model, 16)
    capsys.readouterr()
    for argv in (["inspect", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "i")],
                 ["eval", str(tmp_path / "nowhere"), "--dataset", "digits"],
                 ["convert", "timm:", str(tmp_path / "x.safetensors")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("nowhere" in err or "timm:" in err), err
