"""``vitlab finetune --config PRESET_OR_FILE [key=value ...] --out DIR [--resume] [--sweep lr=0.001,0.003]``.

Fine-tunes ``model.init_from`` (our .safetensors, a run directory, an official .npz or ``timm:NAME``) with a new
zero-initialised head at ``data.img_size``. ``--sweep`` trains one sub-run per value, picks on the dev split
and reports the winner's test accuracy (Appendix B.1.1 of the paper).
"""
from __future__ import annotations

import argparse

from vitlab.train.commands_common import (add_run_arguments, config_from_args, exit_status, print_summary,
                                          write_run_report)
from vitlab.train.distributed import shutdown
from vitlab.train.runs import finetune


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...",
                        help="try each value (e.g. lr=0.001,0.003,0.01,0.03), pick on the dev split; "
                             "'none' trains once even when the preset has a grid")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    sweep = args.sweep
    if sweep is not None and sweep.strip().lower() in ("none", ""):
        sweep = {}
    clean = False
    try:
        summary = finetune(cfg, args.out, resume=args.resume, sweep=sweep)
        clean = True
    finally:
        shutdown(clean)
    print_summary(summary, args.out)
    write_run_report(args.out)
    return exit_status(summary)
