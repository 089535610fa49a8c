"""``vitlab weights [--json] [--download NAME]``: the published checkpoints vitlab can fetch by name.

Each row: ``MODEL.TAG`` (use it as ``pretrained:MODEL.TAG`` or ``create_model(MODEL, pretrained=TAG)``), what it
was trained on, resolution, parameters, ImageNet-1k top-1 where published, and the source cited in
:mod:`vitlab.weights.catalog`. ``--download NAME`` fetches one into the cache and prints its path and SHA-256.
"""
from __future__ import annotations

import argparse
import json

from vitlab.weights.catalog import list_checkpoints, lookup
from vitlab.weights.download import download_weights, weights_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    parser.add_argument("--download", metavar="MODEL.TAG", help="fetch one checkpoint into the cache")


def rows() -> list[dict]:
    return [{"name": c.name, "data": c.data, "resolution": c.resolution, "num_classes": c.num_classes,
             "params_m": round(c.num_params() / 1e6, 1), "top1": c.top1, "source": c.source, "url": c.url}
            for c in list_checkpoints()]


def run(args: argparse.Namespace) -> int:
    if args.download:
        entry = lookup(args.download.removeprefix("pretrained:"))
        got = download_weights(entry.url, sha256=entry.sha256)
        print(f"{entry.name}: {got.path} (SHA-256 {got.sha256}{', cached' if got.cached else ''})")
        return 0
    table = rows()
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    width = max(len(r["name"]) for r in table)
    data_width = max(len(r["data"]) for r in table)
    print(f"{'name':<{width}}  {'trained on':<{data_width}}  {'res':>4}  {'params':>7}  {'top-1':>6}  source")
    for r in table:
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
        print(f"{r['name']:<{width}}  {r['data']:<{data_width}}  {r['resolution']:>4}  {r['params_m']:>6.1f}M  "
              f"{top1:>6}  {r['source']}")
    print(f"\n{len(table)} checkpoints; use pretrained:NAME (model.init_from, --checkpoint) or "
          f"create_model(MODEL, pretrained=TAG). Cache: {weights_dir()}")
    return 0
