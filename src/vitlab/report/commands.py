"""``vitlab report DIR``: (re)build ``DIR/report.html`` for a run, study, inspection or demo directory.

The kind of directory is detected from its files (see :mod:`vitlab.report.pages`); figures the page needs and
that the directory's files allow (training curves, confusion matrix, few-shot curve) are redrawn on the way.
"""
from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a run, study, inspection or demo directory")


def run(args: argparse.Namespace) -> int:
    from vitlab.report.pages import build_report, detect_kind

    start = time.perf_counter()
    kind = detect_kind(args.directory)
    path = build_report(args.directory)
    print(f"wrote {path} ({kind} report, {time.perf_counter() - start:.1f} s)")
    return 0
