"""Fine-tuning: a pre-trained run moves to a higher resolution with a new head; the lr sweep picks on dev."""
from __future__ import annotations

import json

import torch
from train_helpers import run, tiny_config, tiny_tree, vitlab_cmd, weights, write_config

import vitlab
from vitlab.train import evaluate_checkpoint, finetune, parse_sweep, pretrain


def _pretrained(tmp_path):
    out = tmp_path / "pre"
    pretrain(tiny_config(train={"steps": 10}), out)
    return out


def test_finetune_from_a_run_directory_at_a_higher_resolution(tmp_path):
    pre = _pretrained(tmp_path)
    cfg = tiny_config(
        model={"name": None, "init_from": str(pre)},
        data={"img_size": 24, "options": {"num_samples": 256, "img_size": 24, "num_classes": 3, "channels": 3,
                                          "seed": 1}},
        optim={"name": "sgd", "lr": 0.01, "weight_decay": 0.0, "schedule": "cosine"},
        train={"steps": 5},
    ).override({"task": "finetune"})
    summary = finetune(cfg, tmp_path / "ft", sweep={})
    assert summary["task"] == "finetune" and summary["img_size"] == 24 and summary["num_classes"] == 3
    model = vitlab.load_model(tmp_path / "ft" / "checkpoints" / "best.safetensors")
    assert tuple(model.config.img_size) == (24, 24) and model.config.num_classes == 3
    before = weights(pre)
    after = weights(tmp_path / "ft")
    assert after["pos_embed.weight"].shape[1] == 1 + 6 * 6 and before["pos_embed.weight"].shape[1] == 1 + 4 * 4
    # the backbone started from the pre-trained weights: after 5 small SGD steps it is still close to them
    drift = float((after["blocks.1.mlp.fc2.weight"] - before["blocks.1.mlp.fc2.weight"]).abs().max())
    assert drift < 0.05


def test_sweep_picks_on_dev_and_reports_the_winners_test_accuracy(tmp_path):
    pre = _pretrained(tmp_path)
    tree = tiny_tree(optim={"name": "sgd", "lr": 0.01, "weight_decay": 0.0}, train={"steps": 6})
    tree["model"] = {"name": None, "init_from": str(pre)}
    tree["task"] = "finetune"
    config = write_config(tmp_path / "ft.yaml", tree)
    result = run(vitlab_cmd("finetune", "--config", str(config), "--out", str(tmp_path / "sweep"),
                            "--sweep", "lr=0.0001,0.03"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    trials = summary["sweep"]["trials"]
    assert [t["values"] for t in trials] == [{"optim.lr": 0.0001}, {"optim.lr": 0.03}]
    best = max(trials, key=lambda t: t["dev_accuracy"])
    assert summary["sweep"]["winner"] == best["values"]
    assert summary["sweep"]["dev_fraction"] == 0.1  # synthetic is not in the paper's table: 10%
    assert 0.0 <= summary["metrics"]["test_accuracy"] <= 1.0
    final = json.loads((tmp_path / "sweep" / "final" / "summary.json").read_text())
    assert final["metrics"]["test_accuracy"] == summary["metrics"]["test_accuracy"]
    assert final["train_images"] == 256  # the refit trains on the whole training split
    for trial in trials:
        sub = json.loads((tmp_path / "sweep" / trial["dir"] / "summary.json").read_text())
        assert sub["train_images"] == 256 - 26 and "test_accuracy" not in sub["metrics"]  # no peeking at test
    assert (tmp_path / "sweep" / "checkpoints" / "best.safetensors").exists()
    assert parse_sweep("lr=0.001,0.003") == {"optim.lr": [0.001, 0.003]}


def test_eval_command_and_function(tmp_path):
    pre = _pretrained(tmp_path)
    options = {"num_samples": 256, "img_size": 16, "num_classes": 4, "channels": 3}
    direct = evaluate_checkpoint(pre, "synthetic", split="test", source_options=options)
    summary = json.loads((pre / "summary.json").read_text())
    assert abs(direct["accuracy"] - summary["metrics"]["test_accuracy"]) < 1e-9
    result = run(vitlab_cmd("eval", str(pre / "checkpoints" / "best.safetensors"), "--dataset", "synthetic",
                            "-o", "num_samples=256", "-o", "img_size=16", "-o", "num_classes=4", "-o", "channels=3",
                            "--out",
                            str(tmp_path / "eval")))
    assert result.returncode == 0, result.stderr[-3000:]
    on_disk = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert on_disk["accuracy"] == direct["accuracy"]
    assert torch.tensor(on_disk["num_examples"]) > 0


def test_init_from_official_npz_and_timm_weights(tmp_path):
    """The fine-tuning start from the other two sources: backbone copied, zero head, new classes."""
    import timm

    from vitlab.interop.official import save_npz
    from vitlab.weights import resolve

    ours = vitlab.create_model("vit_ti4", num_classes=7, img_size=16, depth=2, width=32, mlp_dim=64, num_heads=2)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_npz(ours, tmp_path / "official.npz")
    model = resolve(tmp_path / "official.npz").build(num_classes=3, img_size=16)
    state, source = model.state_dict(), ours.state_dict()
    for key, value in state.items():
        if key.startswith("head."):
            assert value.shape[0] == 3 and not value.any(), key
        else:
            torch.testing.assert_close(value, source[key], msg=key)

    timm_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    model = resolve(f"timm:vit_tiny_patch16_224@{tmp_path / 'timm.safetensors'}").build(num_classes=4, img_size=32)
    assert model.config.num_classes == 4 and tuple(model.config.img_size) == (32, 32)
    assert model.config.gelu == "exact"  # converted with timm's numerics
    torch.testing.assert_close(model.state_dict()["blocks.0.mlp.fc1.weight"],
                               timm_model.state_dict()["blocks.0.mlp.fc1.weight"])
