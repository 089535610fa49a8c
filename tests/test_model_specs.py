"""Typed model specs: a model name expands to explicit fields, resets what the preset set, and never lies.

The pinned case is the issue's: ``vitlab pretrain --config fmnist-vit-ti4 model.name=vit_b4`` used to build the
preset's 6 x 96 model and label it ViT-B/4. Now it trains Table 1's Base (12 layers, width 768, MLP 3072, 12 heads)
with 4 px patches, and summary.json names that spec.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from train_helpers import tiny_config

from vitlab.config import RunConfig, load_config
from vitlab.errors import ConfigError
from vitlab.models.resnet import BiTConfig
from vitlab.models.specs import (
    DERIVED_FIELDS, BiTSpec, HybridSpec, ViTSpec, check_against_checkpoint, resolve_spec, variant_name,
)
from vitlab.models.vit import ViTConfig


def vit_parameters(*, depth: int, width: int, mlp: int, patch: int, chans: int, tokens: int, classes: int) -> int:
    """A ViT's parameter count written out from Section 3.1 / Table 1 (not from the code under test)."""
    block = 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width) + 2 * 2 * width
    embed = patch * patch * chans * width + width
    return depth * block + embed + width + tokens * width + 2 * width + width * classes + classes


def test_vit_b4_on_the_ti4_preset_trains_vit_b4_and_summary_names_its_spec(tmp_path, capsys):
    from vitlab.cli import main

    out = tmp_path / "b4"
    status = main(["pretrain", "--config", "fmnist-vit-ti4", "model.name=vit_b4", "train.steps=1",
                   "optim.warmup_steps=0", "train.batch_size=4", "data.test_split=null", "train.num_threads=1",
                   "data.dataset=synthetic", "data.options.num_samples=16", "data.options.img_size=28",
                   "data.options.channels=1", "data.options.num_classes=10", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    expected = vit_parameters(depth=12, width=768, mlp=3072, patch=4, chans=1, tokens=1 + 7 * 7, classes=10)
    assert 85.0e6 < expected < 85.3e6  # "ViT-B ... 86M" at 224 px / 1000 classes; 4 px patches, 28 px, grey
    from vitlab.models.weights import read_safetensors

    state, _ = read_safetensors(out / "checkpoints" / "best.safetensors")
    assert sum(t.numel() for t in state.values()) == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "vit_b4" and summary["num_parameters"] == expected
    assert summary["model_spec"] == resolve_spec("vit_b4").model_dump(mode="json")
    assert summary["model_spec"]["depth"] == 12 and summary["model_spec"]["width"] == 768
    recorded = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert recorded["family"] == "vit" and recorded["depth"] == 12 and recorded["mlp_dim"] == 3072


def test_a_name_resets_the_presets_fields_and_later_fields_apply_on_top(tmp_path):
    assert load_config("fmnist-vit-ti4").model.spec.width == 96
    assert load_config("fmnist-vit-ti4", ["model.name=vit_b4"]).model.spec == resolve_spec("vit_b4")
    # fields given with the name apply on top, wherever they stand in the same command line
    for overrides in (["model.name=vit_b4", "model.depth=6"], ["model.depth=6", "model.name=vit_b4"]):
        spec = load_config("fmnist-vit-ti4", overrides).model.spec
        assert (spec.depth, spec.width, spec.num_heads) == (6, 768, 12)
    # a later layer without a name changes one field of the preset's spec
    spec = load_config("fmnist-vit-ti4", ["model.depth=4"]).model.spec
    assert (spec.depth, spec.width) == (4, 96)
    # in a preset chain, a child's name drops the base's fields: demo-gpu-base is Table 1's ViT-B/4 + dropout
    assert load_config("demo-gpu-base").model.spec == resolve_spec("vit_b4", {"dropout": 0.1})
    child = tmp_path / "child.yaml"
    child.write_text("base: fmnist-vit-tiny\nmodel:\n  name: ViT-S/4\n")
    cfg = load_config(child)
    assert cfg.model.name == "vit_s4" and cfg.model.spec == resolve_spec("vit_s4")
    assert cfg.model.spec.family == "vit"  # the base's hybrid stem went with its name


def test_hybrid_and_bit_specs_and_their_registry_names():
    tiny = load_config("fmnist-vit-tiny").model.spec
    assert isinstance(tiny, HybridSpec) and tiny.hybrid_layers == () and tiny.hybrid_width == 32
    assert isinstance(resolve_spec("R50+ViT-B/16"), HybridSpec)
    assert resolve_spec("r50_vit_b16").hybrid_layers == (3, 4, 9)  # Appendix D: stage 4 removed, stage 3 x9
    assert resolve_spec("BiT-R152x4") == BiTSpec(layers=(3, 8, 36, 3), width_factor=4)
    for name in ("vit_b16", "vit_ti4", "r50_vit_l32", "bit_r101x3"):
        assert variant_name(resolve_spec(name)) == name
    assert variant_name(resolve_spec("vit_ti4", {"depth": 6})) is None  # not a registry variant: no name
    assert variant_name(resolve_spec("vit_b16", {"dropout": 0.1})) == "vit_b16"  # regularisation is no new shape


def test_spec_fields_are_the_model_configs_fields():
    """A field added to ViTConfig / BiTConfig must be added to its spec (or the config could not set it)."""
    vit = {f.name for f in dataclasses.fields(ViTConfig)} - set(DERIVED_FIELDS)
    assert set(HybridSpec.model_fields) - {"family"} == vit
    assert set(ViTSpec.model_fields) - {"family"} == vit - {"hybrid_layers", "hybrid_width", "ws_eps", "ws_style"}
    assert set(BiTSpec.model_fields) - {"family"} == {f.name for f in dataclasses.fields(BiTConfig)} - set(
        DERIVED_FIELDS)


@pytest.mark.parametrize("overrides, fragment", [
    (["model.depht=3"], "did you mean model.depth"),
    (["model.gelu=relu"], "model.gelu='relu' is invalid"),
    (["model.dropout=1.5"], "model.dropout=1.5"),
    (["model.depth=true"], "model.depth=True"),
    (["model.width=100"], "not divisible by num_heads"),
    (["model.hybrid_width=32"], "set model.hybrid_layers"),  # a ResNet option on a plain ViT
    (["model.layers=[3,4]"], "model.layers is not a field of a vit model"),
    (["model.family=bit"], "model.family=bit"),
])
def test_bad_model_fields_are_one_line_errors(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("fmnist-vit-ti4", overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_name_that_contradicts_the_checkpoint_is_refused():
    ckpt = resolve_spec("vit_ti4", {"depth": 2, "width": 32, "mlp_dim": 64, "num_heads": 2})
    check_against_checkpoint(None, {}, ckpt, "run")  # no name: the checkpoint decides
    check_against_checkpoint(None, {"depth": 2}, ckpt, "run")  # fields that agree
    check_against_checkpoint("vit_ti4", {"depth": 2, "width": 32, "mlp_dim": 64, "num_heads": 2}, ckpt, "run")
    with pytest.raises(ConfigError, match=r"model.name=vit_b16 contradicts model.init_from=run, which has "
                                          r"patch_size=4 \(config: 16\)"):
        check_against_checkpoint("vit_b16", {}, ckpt, "run")
    with pytest.raises(ConfigError, match=r"depth=2 \(config: 6\)"):
        check_against_checkpoint(None, {"depth": 6}, ckpt, "run")
    with pytest.raises(ConfigError, match="is a bit model"):
        check_against_checkpoint("bit_r50x1", {}, ckpt, "run")


def test_finetune_with_a_lying_name_exits_2_and_without_a_name_reports_the_checkpoints_spec(tmp_path, capsys):
    from vitlab.cli import main
    from vitlab.train import pretrain

    pre = tmp_path / "pre"
    pretrain(tiny_config(train={"steps": 3, "checkpoint_every": 0}), pre)
    common = ["finetune", "--config", str(pre / "config.yaml"), "task=finetune", f"model.init_from={pre}",
              "train.steps=2", "optim.warmup_steps=0", "sweep.grid={}"]
    status = main(common + ["model.name=vit_b16", "--out", str(tmp_path / "lie")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "model.name=vit_b16 contradicts" in err, err
    status = main(common + ["model.name=null", "--out", str(tmp_path / "ft")])
    assert status == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["model_spec"]["depth"] == 2 and summary["model_spec"]["width"] == 32
    assert summary["model"] == str(pre)  # no registry variant has this shape: the reference, not a lying name


def test_config_yaml_records_the_spec_and_reads_back_equal(tmp_path):
    for name in ("fmnist-vit-tiny", "fmnist-vit-ti4", "jft-bit-r50x1", "jft-r50-vit-b16"):
        cfg = load_config(name)
        tree = cfg.to_dict()
        assert tree["model"]["family"] == cfg.model.spec.family
        assert set(cfg.model.spec.model_fields) <= set(tree["model"])
        path = tmp_path / f"{name}.yaml"
        path.write_text(cfg.to_yaml())
        assert load_config(path) == cfg
    finetune = load_config("cifar10-finetune", ["model.init_from=x.npz", "model.drop_path=0.1"])
    assert finetune.model.spec is None and finetune.to_dict()["model"] == {
        "name": None, "init_from": "x.npz", "drop_path": 0.1}  # the checkpoint carries the rest


def test_warmup_longer_than_a_shortened_preset_says_the_fix():
    with pytest.raises(ConfigError) as info:
        load_config("fmnist-vit-tiny", ["train.steps=100"])
    message = str(info.value)
    assert "optim.warmup_steps=300 is longer than train.steps=100" in message
    assert "optim.warmup_steps=10" in message
    assert load_config("fmnist-vit-tiny", ["train.steps=100", "optim.warmup_steps=10"]).train.steps == 100


def test_scale_out_keys_have_their_agreed_defaults_and_ranges():
    cfg = load_config("fmnist-vit-ti4")
    assert cfg.train.activation_checkpointing is False
    d = cfg.distributed
    assert (d.param_dtype, d.reduce_dtype, d.reshard_after_forward, d.cpu_offload) == ("fp32", "fp32", True, False)
    cfg = cfg.override(["train.activation_checkpointing=2", "distributed.param_dtype=bf16", "reduce_dtype=bf16",
                        "reshard_after_forward=false", "cpu_offload=true"])
    assert cfg.train.activation_checkpointing == 2 and cfg.distributed.param_dtype == "bf16"
    assert cfg.distributed.reshard_after_forward is False and cfg.distributed.cpu_offload is True
    assert cfg.override(["train.activation_checkpointing=true"]).train.activation_checkpointing is True
    for bad in ("train.activation_checkpointing=0", "distributed.param_dtype=fp16", "cpu_offload=maybe"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].split(".")[-1]):
            cfg.override([bad])


def test_validation_errors_are_one_line_naming_key_and_value():
    cases = {"optim.lr=-1": "optim.lr=-1", "train.steps=2.5": "train.steps=2.5", "optim.name=rmsprop": "'rmsprop'",
             "optim.betas=[0.9,1.5]": "1.5", "train.device=tpu": "train.device='tpu'", "seed=x": "seed='x'",
             "data.dev_fraction=1": "data.dev_fraction=1"}
    for override, fragment in cases.items():
        with pytest.raises(ConfigError) as info:
            RunConfig().override(["model.name=vit_ti4", "data.img_size=16", "steps=10", override])
        assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)
