"""ONNX export: one file with a dynamic batch axis, onnxruntime's logits within 1e-4 of PyTorch's (fp32) at
batch sizes 1 and 7, for a ViT with a class token, one with GAP, a BiT ResNet and a hybrid."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from small_models import small_bit, small_hybrid, small_vit
from vitlab.cli import main
from vitlab.models.weights import save_model, set_inference_meta

ort = pytest.importorskip("onnxruntime")

from vitlab.interop.onnx import export_onnx  # noqa: E402


@pytest.mark.parametrize("build", [small_vit, lambda: small_vit("gap"), small_bit, small_hybrid],
                         ids=["vit-token", "vit-gap", "bit", "hybrid"])
def test_onnxruntime_matches_pytorch_at_batch_1_and_7(build, tmp_path):
    model = build()
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.max_abs_diff < 1e-4 and report.batches == (1, 7)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # the batch axis is symbolic
    for n in (1, 7):
        x = torch.randn(n, 3, 32, 32)
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == (n, 5)
        np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_parity(tmp_path):
    pytest.importorskip("onnxscript")
    model = small_vit("gap")
    assert export_onnx(model, tmp_path / "m.onnx", exporter="dynamo").max_abs_diff < 1e-4


def test_export_command_carries_classes_and_preprocessing(tmp_path, capsys):
    model = set_inference_meta(small_vit(), classes=list("abcde"),
                               preprocessing={"img_size": [32, 32], "resize": "bilinear", "mean": [0.5] * 3,
                                              "std": [0.5] * 3, "channels": 1, "in_chans": 3})
    save_model(model, tmp_path / "m.safetensors")
    assert main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx")]) == 0
    assert "max abs diff" in capsys.readouterr().out
    props = ort.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(props["vitlab.classes"]) == list("abcde")
    assert json.loads(props["vitlab.preprocessing"])["channels"] == 1
    assert main(["export", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out",
                 str(tmp_path / "x.onnx")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
