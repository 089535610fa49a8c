"""`vitlab <command>`: the command-line face of the library.

Each command lives beside the code it drives (``vitlab.models.commands``, ``vitlab.train.commands``, ...)
and is imported only when it runs, so `vitlab models` does not pay for importing the training engine.
A command module provides ``add_arguments(parser)`` and ``run(args) -> int``.

Exit status: 0 on success, 2 on bad input (a :class:`vitlab.errors.VitlabError`, printed as one line on
stderr), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

from vitlab.errors import VitlabError
from vitlab.outdir import OutputGuard

# command name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("vitlab.models.commands", "list the model variants with parameters and GMACs"),
    "presets": ("vitlab.train.commands_presets", "list the packaged presets: what each reproduces, model, steps, time"),
    "pretrain": ("vitlab.train.commands_pretrain", "pre-train a model (the paper's Adam recipe)"),
    "finetune": ("vitlab.train.commands_finetune", "fine-tune a checkpoint (SGD, zero-init head, new resolution)"),
    "eval": ("vitlab.evaluate.commands_eval", "evaluate a checkpoint: top-1, top-5, per class, confusion matrix"),
    "fewshot": ("vitlab.evaluate.commands_fewshot", "few-shot linear evaluation (closed-form least squares)"),
    "suite": ("vitlab.evaluate.commands_suite", "run a VTAB-style multi-task suite"),
    "demo": ("vitlab.demo", "the main job: pre-train on Fashion-MNIST, transfer to digits, report"),
    "download": ("vitlab.data.commands_download", "locate or download a dataset (checksummed)"),
    "dedup": ("vitlab.data.commands_dedup", "find near-duplicates of test images in a pre-training source"),
    "shards": ("vitlab.data.commands_shards", "write a source (e.g. an image folder) as tar shards for streaming"),
    "study": ("vitlab.studies.commands", "the paper's studies with seeds and verdicts (--list shows them)"),
    "inspect": ("vitlab.inspect.commands", "attention rollout, attention distance, position similarity, filters"),
    "report": ("vitlab.report.commands", "(re)build DIR/report.html for a run, study, inspection or demo directory"),
    "convert": ("vitlab.weights.commands_convert", "convert weights between vitlab, official .npz, timm and Hugging Face"),
    "weights": ("vitlab.weights.commands", "list the published checkpoints (pretrained:MODEL.TAG) and fetch them"),
    "predict": ("vitlab.predict.commands", "top-k classes of image files from a checkpoint or an .onnx"),
    "export": ("vitlab.predict.commands_export", "export a checkpoint to ONNX (checked against onnxruntime)"),
    "plan": ("vitlab.train.commands_plan", "memory per GPU, micro-batch and time per epoch before launching"),
}

# commands whose output is a file (its folder is guarded) rather than a folder: command -> argument
# (a command whose --out is a file must be listed here, or its --out would be made a folder up front)
OUTPUT_FILES: dict[str, str] = {"convert": "dest", "fewshot": "out", "predict": "out", "export": "out"}


def _output_guard(args: argparse.Namespace) -> OutputGuard | nullcontext:
    """The guard of the command's output folder (created up front, cleaned when the start fails)."""
    if args.command in OUTPUT_FILES:
        target = getattr(args, OUTPUT_FILES[args.command], None)
        if target:
            return OutputGuard(Path(target).expanduser().parent, option="output folder", track_files=False)
        return nullcontext()
    out = getattr(args, "out", None)
    return OutputGuard(out) if out else nullcontext()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Parse the command name first so that only that command's module is imported.
    parser = argparse.ArgumentParser(prog="vitlab", add_help=False)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("command", nargs="?")
    known, _ = parser.parse_known_args(argv)
    full = _parser_for(known.command)
    args, extra = full.parse_known_args(argv)
    # `key=value` overrides may also come after options (`--out DIR lr=0.01`); argparse leaves those over.
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
        "=" in item and not item.startswith("-") for item in extra
    ):
        args.overrides += extra
    elif extra:
        full.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_output(args.verbose)
    if args.command is None:
        full.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        with _output_guard(args):
            return int(module.run(args) or 0)
    except VitlabError as error:
        print(f"vitlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system said no (permission, disk full, not a directory): not a bug
        print(f"vitlab {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitlab {args.command}: interrupted", file=sys.stderr)
        return 130


# Libraries whose INFO/WARNING chatter ("Loaded  from checkpoint", progress bars, per-process banners) is not
# the user's business; -v shows it all again.
QUIET_LOGGERS = ("timm", "transformers", "huggingface_hub", "torch", "torch.distributed", "urllib3", "PIL",
                 "matplotlib", "filelock", "onnxscript", "onnxruntime")
QUIET_ENV = {
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # c10d / gloo per-process warnings, printed by torch's C++ side
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",  # tensorboard's optional TensorFlow import
}


def configure_output(verbose: bool) -> None:
    """vitlab's own messages at INFO (DEBUG with -v); libraries' logs, deprecation warnings and progress bars
    only with -v. Runs before any command imports torch, so the environment settings reach its C++ logging
    and every torchrun worker (each runs this CLI)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("vitlab").setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(?!vitlab)")  # from library code


def _one_line(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return (where + (error.strerror or str(error))).replace("\n", " ")


def _parser_for(command: str | None) -> argparse.ArgumentParser:
    """A parser that knows every command's name but imports only the chosen command's module."""
    parser = argparse.ArgumentParser(prog="vitlab", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(command_parser)
    return parser


if __name__ == "__main__":
    sys.exit(main())
