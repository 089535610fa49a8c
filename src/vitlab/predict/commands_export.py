"""``vitlab export --checkpoint REF --format onnx --out FILE``: a checkpoint as ONNX for inference runtimes.

REF is anything ``vitlab predict`` takes except ``.onnx``. The export is run through onnxruntime at batch sizes
1 and 7 and the largest logit difference from PyTorch is printed; above 1e-3 the file is refused.
"""
from __future__ import annotations

import argparse

from vitlab.errors import ConfigError
from vitlab.interop.onnx import EXPORTERS, export_onnx
from vitlab.predict.backends import load_model_for_inference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="REF",
                        help=".safetensors, run dir, .npz, pretrained:MODEL.TAG or URL")
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--exporter", choices=EXPORTERS, default="auto",
                        help="torch's tracing exporter (fast) or torch.export + onnxscript (dynamo)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")


def run(args: argparse.Namespace) -> int:
    if not args.out.endswith(".onnx"):
        raise ConfigError(f"--out {args.out}: expected a file name ending in .onnx")
    model = load_model_for_inference(args.checkpoint)
    report = export_onnx(model, args.out, check=not args.no_check, exporter=args.exporter)
    check = (f"onnxruntime vs PyTorch max abs diff {report.max_abs_diff:.2e} at batch sizes "
             f"{', '.join(map(str, report.batches))}") if report.batches else "not checked"
    print(f"wrote {report.path} (opset {report.opset}, dynamic batch; {check})")
    return 0
