"""`vitlab shards write`: turn an image folder (or any source) into tar shards for streaming.

    vitlab shards write --source image_folder --source-opt root=/data/train --out /data/shards --per-shard 1000
    vitlab shards write --source fashion_mnist:train --out shards/fmnist

Then train on them with ``data.dataset=shards data.options.urls=[/data/shards]`` (a directory takes its ``*.tar``
in name order; add ``data.options.streaming=true data.options.num_classes=N data.options.num_samples=M`` to stream
them). See ``docs/data.md``, "Shards".
"""
from __future__ import annotations

import argparse

from vitlab.data.cli_options import parse_options, source_spec
from vitlab.data.shard_writer import write_shards
from vitlab.data.registry import get_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["write"], help="write: make shards from a source")
    parser.add_argument("--source", required=True, help="NAME[:SPLIT] (default split train), e.g. image_folder")
    parser.add_argument("--source-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="option for the source, e.g. root=/data/images (repeatable)")
    parser.add_argument("--out", required=True, help="folder for the shards and classes.json")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    parser.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar, ...")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the source's order")


def run(args: argparse.Namespace) -> int:
    name, split = source_spec(args.source, "train")
    source = get_source(name, split=split, **parse_options(args.source_opt))
    paths = write_shards(source, args.out, per_shard=args.per_shard, prefix=args.prefix,
                         seed=None if args.no_shuffle else args.seed)
    print(f"wrote {len(source)} samples of {source.num_classes} classes to {len(paths)} shard(s) in {args.out}")
    return 0
