"""`vitlab fewshot`: few-shot linear accuracy of a frozen model on any data source.

    vitlab fewshot --checkpoint runs/fmnist --dataset digits --img-size 32 --shots 1,5,10,25 --seeds 3
    vitlab fewshot --model vit_ti4 --img-size 28 --in-chans 1 --dataset fashion_mnist   # random-init control

Prints the per-shot table (mean and spread over seeds) and, with ``--out``, writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import yaml

from vitlab.data import get_source
from vitlab.errors import ConfigError
from vitlab.evaluate.fewshot import fewshot_evaluate
from vitlab.models.registry import create_model
from vitlab.train.distributed import pick_device
from vitlab.weights import resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint",
                       help="weights: .safetensors, run directory, official .npz, timm:NAME[@FILE] or hf:NAME")
    which.add_argument("--model", help="a model name, randomly initialised (the control for a pre-trained one)")
    parser.add_argument("--dataset", default="fashion_mnist", help="a vitlab data source (default fashion_mnist)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a source option, e.g. --option root=/data/pets (repeatable)")
    parser.add_argument("--train-split", default="train", help="where the shots are drawn from")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--shots", default="1,5,10,25", help="comma-separated shot counts (default 1,5,10,25)")
    parser.add_argument("--seeds", type=int, default=3, help="random draws per shot count (default 3)")
    parser.add_argument("--l2", default="1024",
                        help="ridge penalty (default 2^10, the paper's), or 'dev' to pick it on a dev split")
    parser.add_argument("--representation", default="pre_logits",
                        help="pre_logits (default) | pooled | token | gap | block_<i>")
    parser.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's)")
    parser.add_argument("--in-chans", type=int, default=None, help="input channels (default: the model's)")
    parser.add_argument("--test-limit", type=int, default=None, help="score at most this many test images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", help="write the results as JSON to this file")


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--shots {text!r}: expected comma-separated positive integers, e.g. 1,5,10,25") from None
    if not shots or min(shots) < 1:
        raise ConfigError(f"--shots {text!r}: expected comma-separated positive integers, e.g. 1,5,10,25")
    return shots


def parse_l2(text: str | float) -> float | str:
    if str(text) == "dev":
        return "dev"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"--l2 {text!r}: expected a positive number or 'dev'")
    return value


def parse_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return options


def frozen_model(checkpoint: str | None, name: str | None, img_size: int | None, in_chans: int | None):
    """The model to evaluate: a checkpoint (moved to ``img_size`` if given) or a random-init named model."""
    if checkpoint:
        model = resolve(checkpoint).build(img_size=img_size)
        if in_chans is not None and in_chans != model.config.in_chans:
            raise ConfigError(f"--in-chans {in_chans}: {checkpoint} takes {model.config.in_chans}-channel images")
        return model
    return create_model(name, num_classes=0, img_size=img_size, in_chans=in_chans or 3)


def run(args: argparse.Namespace) -> int:
    shots, l2 = parse_shots(args.shots), parse_l2(args.l2)
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: expected a positive integer")
    options = parse_options(args.option)
    model = frozen_model(args.checkpoint, args.model, args.img_size, args.in_chans)
    device = pick_device(args.device)
    model.to(device)
    train = get_source(args.dataset, split=args.train_split, **options)
    test = get_source(args.dataset, split=args.test_split, **options)
    report = fewshot_evaluate(model, train, test, shots=shots, seeds=tuple(range(args.seeds)), l2=l2,
                              representation_name=args.representation, img_size=args.img_size,
                              in_chans=args.in_chans, batch_size=args.batch_size, device=device,
                              test_limit=args.test_limit, dataset=args.dataset)
    print(report.table())
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report.to_dict(), indent=2))
        os.replace(tmp, path)
    return 0
