"""``vitlab eval CHECKPOINT --dataset NAME [--split test] [--img-size N] [-o key=value ...] [--out DIR]``.

CHECKPOINT is any weights reference (:func:`vitlab.weights.resolve`: a ``.safetensors``, a run directory, an
official ``.npz``, ``timm:NAME``, ``hf:NAME``). Prints top-1
accuracy; with ``--out`` also writes ``DIR/eval.json``. ``-o key=value`` passes a data-source option
(e.g. ``-o root=/data/pets``).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vitlab.config import parse_overrides
from vitlab.errors import ConfigError
from vitlab.train.evaluation import evaluate_checkpoint

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="weights: .safetensors, run directory, official .npz, timm:NAME[@FILE] or hf:NAME")
    parser.add_argument("--dataset", required=True, help="a vitlab.data source (fashion_mnist, digits, ...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--img-size", type=int, default=None, help="evaluate at this resolution")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, metavar="DIR", help="write DIR/eval.json")
    parser.add_argument("--option", "-o", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a data source option, e.g. -o root=/data/pets (repeatable)")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size}: expected a positive integer")
    options = dict(parse_overrides(args.options))
    result = evaluate_checkpoint(args.checkpoint, args.dataset, split=args.split, img_size=args.img_size,
                                 batch_size=args.batch_size, device=args.device, source_options=options)
    log.info("%s on %s/%s: top-1 accuracy %.4f (%d images, %d px)", result["checkpoint"], args.dataset,
             args.split, result["accuracy"], result["num_examples"], result["img_size"])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0
