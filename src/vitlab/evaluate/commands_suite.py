"""`vitlab suite`: fine-tune and/or few-shot probe a model on every task of a suite; print the grouped table.

    vitlab suite --suite small --checkpoint runs/demo/pretrain --out runs/suite
    vitlab suite --suite small --checkpoint CKPT --mode fewshot --out runs/suite-fewshot
    vitlab suite --suite my-suite.yaml --model vit_ti4 model.depth=6 data.in_chans=1 --out runs/scratch

Trailing ``key=value`` arguments override the fine-tuning config of every task (``train.steps=50``).
Re-running with the same ``--out`` reuses finished tasks.
"""
from __future__ import annotations

import argparse

from vitlab.errors import ConfigError
from vitlab.evaluate.suite import MODES, grouped_table, load_suite, run_suite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="small", help="a packaged suite name (default: small) or a YAML file")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="pre-trained weights: .safetensors, run directory, official .npz, timm:NAME[@FILE] or hf:NAME")
    which.add_argument("--model", help="a model name trained from scratch / probed at random init (the control)")
    parser.add_argument("--mode", default="both", choices=("both", "finetune", "fewshot"),
                        help="fine-tune every task, few-shot probe it, or both (default)")
    parser.add_argument("--tasks", help="comma-separated subset of the suite's task names")
    parser.add_argument("--finetune-config", metavar="PRESET_OR_FILE",
                        help="replace the suite's fine-tuning preset and its CPU scale-down (e.g. vtab-finetune)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (few-shot feature extraction)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where task runs and the report go")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="fine-tuning config overrides for every task, e.g. train.steps=50")


def run(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    modes = MODES if args.mode == "both" else (args.mode,)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if args.tasks and not tasks:
        raise ConfigError(f"--tasks {args.tasks!r}: expected comma-separated task names")
    results = run_suite(suite, args.out, checkpoint=args.checkpoint, model_name=args.model, modes=modes,
                        config=args.finetune_config, overrides=args.overrides, tasks=tasks, device=args.device)
    print(f"suite {suite.name}: accuracy % on each task's test set")
    print(grouped_table(suite, results, modes))
    print(f"report: {args.out}/suite-report.md")
    return 0
