"""``vitlab predict --checkpoint REF PATH... [--top-k K] [--format table|json|csv] [--batch-size N]``.

REF: a ``.safetensors`` written by vitlab, a run directory, an official ``.npz``, ``pretrained:MODEL.TAG``, an
``http(s)://`` / ``file://`` URL, or an ``.onnx`` written by ``vitlab export`` (run by onnxruntime).
PATH: image files, folders (searched recursively), glob patterns (quote them) and manifests (``.txt`` / ``.csv``).

Predictions go to stdout (``--out FILE`` writes them atomically instead); each unreadable file is named on
stderr and the rest are predicted. Exit status 2 when no image at all could be read.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from vitlab.errors import ConfigError, DataError
from vitlab.models.weights import atomic_write
from vitlab.predict.inputs import expand_inputs
from vitlab.predict.predictor import Prediction, Predictor

FORMATS = ("table", "json", "csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, glob patterns, manifests")
    parser.add_argument("--checkpoint", required=True, metavar="REF",
                        help=".safetensors, run dir, .npz, pretrained:MODEL.TAG, URL or .onnx")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="PyTorch device (cpu, cuda, ...); .onnx runs on the CPU")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the predictions here, not to stdout")


def render(predictions: list[Prediction], fmt: str) -> str:
    """Predictions as a table (one line per image), JSON (a list of objects) or CSV (one row per rank)."""
    good = [p for p in predictions if p.ok]
    if fmt == "json":
        return json.dumps([p.to_dict() for p in predictions], indent=1) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "index", "probability"])
        for p in good:
            for rank, (name, index, prob) in enumerate(p.top, 1):
                writer.writerow([p.source, rank, name, index, f"{prob:.6f}"])
        return buffer.getvalue()
    width = max((len(p.source) for p in good), default=0)
    return "".join(f"{p.source:<{width}}  " + "  ".join(f"{name} {prob:.4f}" for name, _, prob in p.top) + "\n"
                   for p in good)


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ConfigError(f"--top-k={args.top_k}: expected a positive integer")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size}: expected a positive integer")
    paths, missing = expand_inputs(args.paths)
    predictor = Predictor(args.checkpoint, device=args.device, batch_size=args.batch_size)
    predictions = list(predictor.iter_predict(paths, args.top_k)) if paths else []
    unreadable = missing + [(p.source, p.error or "") for p in predictions if not p.ok]
    for name, reason in unreadable:
        print(f"vitlab predict: unreadable {name}: {reason}", file=sys.stderr)
    if not any(p.ok for p in predictions):
        first = f" ({unreadable[0][0]}: {unreadable[0][1]})" if unreadable else ""
        raise DataError(f"no readable image among {len(paths) + len(missing)} input(s){first}")
    if args.format == "json" and missing:
        predictions += [Prediction(name, error=reason) for name, reason in missing]
    text = render(predictions, args.format)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    else:
        sys.stdout.write(text)
    return 0
