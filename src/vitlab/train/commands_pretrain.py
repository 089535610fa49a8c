"""``vitlab pretrain --config PRESET_OR_FILE [key=value ...] --out DIR [--resume]``.

Runs under ``torchrun --nproc-per-node N -m vitlab pretrain ...`` as DDP (see docs/scaling-out.md).
"""
from __future__ import annotations

import argparse

from vitlab.train.commands_common import (add_run_arguments, config_from_args, exit_status, print_summary,
                                          write_run_report)
from vitlab.train.distributed import shutdown
from vitlab.train.runs import pretrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    clean = False
    try:
        summary = pretrain(cfg, args.out, resume=args.resume)
        clean = True
    finally:
        shutdown(clean)
    print_summary(summary, args.out)
    write_run_report(args.out)
    return exit_status(summary)
