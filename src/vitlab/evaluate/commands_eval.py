"""``vitlab eval CHECKPOINT --dataset NAME [--split test] [--img-size N] [-o key=value ...] [--out DIR]``.

CHECKPOINT is a ``.safetensors`` written by vitlab, a run directory (its best checkpoint), an official ``.npz``,
``pretrained:MODEL.TAG`` or a URL. Prints top-1 and top-5 accuracy and the weakest classes; with ``--out`` writes
``DIR/eval.json`` (everything, including accuracy per class) and ``DIR/confusion.json``
(``{"classes": [...], "matrix": [[...]]}``, rows = true class, columns = predicted). ``-o key=value`` passes a
data-source option (e.g. ``-o root=/data/pets``).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vitlab.config import parse_overrides
from vitlab.errors import ConfigError
from vitlab.evaluate.classify import evaluate_checkpoint_report
from vitlab.models.weights import atomic_write
from vitlab.report import confusion_figure

log = logging.getLogger(__name__)
WEAKEST_SHOWN = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .safetensors file, a run directory, an .npz, pretrained:MODEL.TAG or URL")
    parser.add_argument("--dataset", required=True, help="a vitlab.data source (fashion_mnist, digits, ...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--img-size", type=int, default=None, help="evaluate at this resolution")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, metavar="DIR", help="write DIR/eval.json and DIR/confusion.json")
    parser.add_argument("--option", "-o", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a data source option, e.g. -o root=/data/pets (repeatable)")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size}: expected a positive integer")
    options = dict(parse_overrides(args.options))
    result = evaluate_checkpoint_report(args.checkpoint, args.dataset, split=args.split, img_size=args.img_size,
                                        batch_size=args.batch_size, device=args.device, source_options=options)
    log.info("%s on %s/%s: top-1 accuracy %.4f, top-5 %.4f (%d images, %d px)", result["checkpoint"],
             args.dataset, args.split, result["accuracy"], result["top5"], result["num_examples"], result["img_size"])
    scored = sorted((c for c in result["per_class"] if c["accuracy"] is not None), key=lambda c: c["accuracy"])
    if len(scored) > 1:
        log.info("weakest classes: %s", ", ".join(f"{c['class']} {c['accuracy']:.3f} ({c['count']})"
                                                  for c in scored[:WEAKEST_SHOWN]))
    if args.out:
        out = Path(args.out)
        atomic_write(out / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        atomic_write(out / "confusion.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(result["confusion"]) + "\n"))
        confusion = result["confusion"]
        figure = confusion_figure(confusion["classes"], confusion["matrix"], out / "confusion")
        log.info("confusion matrix: %s", figure)
    return 0
