"""Images/s of ``vitlab predict`` end to end (decode + resize + model) for ViT-B/16 at 224 px, PyTorch against
onnxruntime on the same exported weights, and the export's parity (max abs logit difference).

Run from the repository root::

    python benchmarks/predict.py                  # 64 JPEGs of 320x240, batch 32, ViT-B/16 (random weights)
    python benchmarks/predict.py --model vit_s16 --images 32

Both sides read the same files through ``vitlab.Predictor``; only the backend differs. Timings are wall-clock
medians of ``--repeats`` passes after one warm-up pass; on a shared machine they are noisy.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitlab
from vitlab.interop.onnx import export_onnx
from vitlab.predict.backends import OnnxBackend, TorchBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = vitlab.create_model(args.model, num_classes=1000).eval()
    with torch.no_grad():  # a fresh head is zero: give the logits something to disagree about
        model.head.weight.normal_(0, 0.02)
        model.head.bias.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
            paths.append(str(path))
        start = time.perf_counter()
        report = export_onnx(model, Path(tmp) / "model.onnx")
        print(f"export {args.model}: {time.perf_counter() - start:.1f} s, onnxruntime vs PyTorch max abs diff "
              f"{report.max_abs_diff:.2e} (batch sizes {report.batches})")
        for backend in (TorchBackend(model), OnnxBackend(Path(tmp) / "model.onnx")):
            predictor = vitlab.Predictor(backend, batch_size=args.batch_size)
            rates = []
            for repeat in range(args.repeats + 1):
                start = time.perf_counter()
                n = sum(p.ok for p in predictor.iter_predict(paths, 1))
                if repeat:  # the first pass warms up
                    rates.append(n / (time.perf_counter() - start))
            print(f"{backend.kind:12s} {statistics.median(rates):7.1f} images/s (median of {args.repeats}, "
                  f"batch {args.batch_size}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
