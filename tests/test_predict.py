"""`vitlab predict` on a folder written here (mixed image modes, a few unreadable files): top-1 agrees with
`vitlab eval` on the same images, unreadable files are named, and an exported .onnx predicts the same."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from small_models import small_vit
from vitlab.cli import main
from vitlab.data.transforms import eval_preprocessing
from vitlab.models.weights import read_safetensors, save_model, set_inference_meta

CLASSES = ["apple", "bear", "cloud"]
BAD = {"apple/broken.png": b"\x89PNG\r\n\x1a\n this is not image data", "bear/empty.jpg": b"",
       "cloud/notes.gif": b"GIF89a"}


def _write_folder(root: Path) -> list[str]:
    rng = np.random.default_rng(0)
    good = []
    modes = ["RGB", "L", "RGBA", "P", "I;16", "CMYK", "LA"]
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(6):
            size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            rgb[..., c] = np.clip(rgb[..., c].astype(int) + 80, 0, 255)  # some class signal
            image = Image.fromarray(rgb, "RGB")
            mode = modes[(c * 6 + i) % len(modes)]
            if mode == "I;16":
                image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)  # 16-bit grey
            elif mode != "RGB":
                image = image.convert(mode)
            suffix = {"CMYK": ".jpg", "P": ".gif"}.get(mode, ".png")
            path = root / name / f"img{i}{suffix}"
            image.save(path)
            good.append(str(path))
    for rel, data in BAD.items():
        (root / rel).write_bytes(data)
    return good


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    good = _write_folder(tmp / "images")
    model = set_inference_meta(small_vit(num_classes=3), classes=CLASSES,
                               preprocessing=eval_preprocessing(32, 3, 3))
    save_model(model, tmp / "model.safetensors")
    return tmp, good


def test_predict_agrees_with_eval_and_names_unreadable_files(folder_and_model, capsys):
    tmp, good = folder_and_model
    images = tmp / "images"
    assert main(["eval", str(tmp / "model.safetensors"), "--dataset", "image_folder", "-o", f"root={images}",
                 "-o", "on_bad_image=skip", "-o", "verify=full", "--out", str(tmp / "eval")]) == 0
    evaluation = json.loads((tmp / "eval" / "eval.json").read_text())
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp / "model.safetensors"), str(images), "--format", "json",
                 "--top-k", "2", "--batch-size", "4"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    readable = [r for r in rows if "top" in r]
    assert sorted(r["path"] for r in readable) == sorted(good)
    assert all(len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in readable)
    correct = sum(r["top"][0]["class"] == Path(r["path"]).parent.name for r in readable)
    assert evaluation["num_examples"] == len(readable)
    assert correct / len(readable) == pytest.approx(evaluation["accuracy"], abs=1e-12)
    for rel in BAD:  # each unreadable file named on stderr, and in the JSON with its reason
        assert str(images / rel) in err
    assert sorted(r["path"] for r in rows if "error" in r) == sorted(str(images / rel) for rel in BAD)
    # the confusion matrix h16 draws: rows = true class, columns = predicted
    confusion = json.loads((tmp / "eval" / "confusion.json").read_text())
    assert confusion["classes"] == CLASSES
    matrix = np.array(confusion["matrix"])
    assert matrix.sum() == len(readable) and np.trace(matrix) == correct
    assert [c["count"] for c in evaluation["per_class"]] == matrix.sum(1).tolist()
    assert evaluation["top5"] == 1.0  # three classes: the target is always among the top five


def test_python_face_table_csv_and_onnx_agree(folder_and_model, capsys):
    pytest.importorskip("onnxruntime")
    tmp, good = folder_and_model
    predictor = vitlab.Predictor(tmp / "model.safetensors", batch_size=5)
    torch_top1 = {p.source: p.label for p in predictor.predict(good, top_k=1)}
    assert set(torch_top1.values()) <= set(CLASSES)
    assert main(["export", "--checkpoint", str(tmp / "model.safetensors"), "--out", str(tmp / "m.onnx")]) == 0
    onnx_top1 = {p.source: p.label for p in vitlab.Predictor(tmp / "m.onnx").predict(good, top_k=1)}
    assert onnx_top1 == torch_top1
    capsys.readouterr()
    manifest = tmp / "list.txt"
    manifest.write_text("\n".join(good[:4]) + "\n")
    assert main(["predict", "--checkpoint", str(tmp / "m.onnx"), str(manifest), "--format", "csv", "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,rank,class,index,probability" and len(lines) == 5
    assert [line.split(",")[2] for line in lines[1:]] == [torch_top1[p] for p in good[:4]]
    pattern = str(tmp / "images" / "*" / "img0.*")
    assert main(["predict", "--checkpoint", str(tmp / "model.safetensors"), pattern]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(CLASSES)


def test_nothing_readable_is_exit_2(folder_and_model, tmp_path, capsys):
    tmp, _ = folder_and_model
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert main(["predict", "--checkpoint", str(tmp / "model.safetensors"), str(tmp_path / "junk.png"),
                 str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("junk.png" in line for line in err) and any("missing.jpg" in line for line in err)
    assert err[-1].startswith("vitlab predict: error: no readable image")


def test_checkpoint_metadata_is_optional_and_round_trips(tmp_path):
    model = small_vit(num_classes=3)
    save_model(model, tmp_path / "plain.safetensors")  # no classes, no preprocessing: an older file
    _, metadata = read_safetensors(tmp_path / "plain.safetensors")
    assert "vitlab.classes" not in metadata
    predictions = vitlab.Predictor(tmp_path / "plain.safetensors").predict(torch.zeros(3, 40, 40, dtype=torch.uint8))
    assert predictions[0].label.startswith("class_")
    set_inference_meta(model, classes=CLASSES, preprocessing=eval_preprocessing(32, 3, 1))
    save_model(model, tmp_path / "meta.safetensors")
    loaded = vitlab.load_model(tmp_path / "meta.safetensors")
    assert loaded.inference_meta == {"classes": CLASSES, "preprocessing": eval_preprocessing(32, 3, 1)}


def test_a_trained_checkpoint_predicts_without_config(tmp_path):
    """Training stores the source's class names and preprocessing: `Predictor` on the run directory needs nothing else."""
    from train_helpers import tiny_config

    from vitlab.data import get_source
    from vitlab.train import pretrain

    pretrain(tiny_config(), tmp_path / "run")
    _, metadata = read_safetensors(tmp_path / "run" / "checkpoints" / "last.safetensors")
    source = get_source("synthetic", split="test", num_samples=256, img_size=16, num_classes=4, channels=3)
    assert json.loads(metadata["vitlab.classes"]) == list(source.classes)
    assert json.loads(metadata["vitlab.preprocessing"]) == eval_preprocessing(16, 3, 3)
    image, _ = source[0]
    top = vitlab.Predictor(tmp_path / "run").predict(image, top_k=4)[0].top
    assert sorted(name for name, _, _ in top) == sorted(source.classes)
