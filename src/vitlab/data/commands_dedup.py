"""`vitlab dedup`: find near-duplicates of test images in a pre-training source; write report + exclusions.

    vitlab dedup --source fashion_mnist:train --against fashion_mnist:test --out runs/dedup
    vitlab dedup --source image_folder --source-opt root=/data/pretrain \
                 --against cifar10:test --against-opt root=/data/cifar --out runs/dedup

Writes ``OUT/report.json`` (settings, counts and every matched pair per test set) and
``OUT/exclusions.txt`` (pre-training indices, one per line). Pre-training honours the list through
``vitlab.data.dedup.load_exclusions`` + ``remaining_indices`` (passed as ``indices=`` to the stream).
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

from vitlab.data.cli_options import parse_options as _parse_opts
from vitlab.data.cli_options import source_spec as _spec
from vitlab.data.dedup import DedupConfig, find_near_duplicates, write_report
from vitlab.data.registry import get_source

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="pre-training source as NAME[:SPLIT] (default split train)")
    parser.add_argument("--source-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="option for the pre-training source, e.g. root=/data/images (repeatable)")
    parser.add_argument("--against", action="append", required=True, metavar="NAME[:SPLIT]",
                        help="downstream test set to protect (repeatable; default split test)")
    parser.add_argument("--against-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="option for the test sets, e.g. root=/data/cifar (repeatable)")
    parser.add_argument("--out", required=True, help="folder for report.json and exclusions.txt")
    parser.add_argument("--max-hamming", type=int, default=None, help="hash candidate radius (of 63 bits)")
    parser.add_argument("--min-correlation", type=float, default=None, help="duplicate threshold (0..1)")
    parser.add_argument("--max-shift", type=float, default=None, help="shift searched, in 32-px thumbnail pixels")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test images (quick check)")


def run(args: argparse.Namespace) -> int:
    config = DedupConfig()
    overrides = {k: v for k, v in (("max_hamming", args.max_hamming), ("min_correlation", args.min_correlation),
                                   ("max_shift", args.max_shift)) if v is not None}
    config = replace(config, **overrides)
    name, split = _spec(args.source, "train")
    corpus = get_source(name, split=split, **_parse_opts(args.source_opt))
    results = {}
    start = time.time()
    for spec in args.against:
        test_name, test_split = _spec(spec, "test")
        queries = get_source(test_name, split=test_split, **_parse_opts(args.against_opt))
        limit = range(min(args.limit, len(queries))) if args.limit else None
        results[f"{test_name}:{test_split}"] = find_near_duplicates(queries, corpus, config=config,
                                                                     query_indices=limit)
    meta = {"source": f"{name}:{split}", "source_size": len(corpus), "seconds": round(time.time() - start, 2)}
    report, exclusions = write_report(results, args.out, meta)
    total = len({i for r in results.values() for i in r.excluded})
    for key, result in results.items():
        print(f"{key}: {len(result.matches)} near-duplicate pairs, "
              f"{len({m.query for m in result.matches})} of {result.num_queries} test images affected")
    print(f"excluded {total} of {len(corpus)} pre-training images; report {report}, exclusion list {exclusions}")
    return 0
