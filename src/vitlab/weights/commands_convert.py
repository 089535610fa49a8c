"""`vitlab convert SRC DST`: any weights reference to our safetensors or the official .npz layout.

The output format follows DST's suffix: ``.safetensors`` (ours, config in metadata) or ``.npz`` (official layout).
SRC is read by :func:`vitlab.weights.resolve`, like every other command's checkpoint:
  SRC.npz / SRC.safetensors / RUN_DIR    an official checkpoint (architecture from its keys, or --model), ours
  timm:NAME[@FILE] / hf:NAME             timm or Hugging Face weights
The older spellings stay: ``--from timm --timm-name N SRC`` is ``timm:N@SRC``, ``--from hf SRC`` is ``hf:SRC``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from vitlab.errors import CheckpointError, ConfigError
from vitlab.interop.official import save_npz
from vitlab.models.weights import save_model
from vitlab.weights.resolver import kind_of, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="source weights: .npz, .safetensors, a run directory, timm:NAME[@FILE], hf:NAME")
    parser.add_argument("dest", help="output file: .safetensors (vitlab) or .npz (official layout)")
    parser.add_argument("--from", dest="kind", choices=("auto", "npz", "vitlab", "timm", "hf"), default="auto")
    parser.add_argument("--model", help="vitlab model name for an .npz whose architecture should not be inferred")
    parser.add_argument("--timm-name", help="timm architecture name, with --from timm")


def source_ref(args: argparse.Namespace) -> str:
    """The weights reference that SRC and the older ``--from`` flags describe."""
    source = str(args.source)
    if args.kind == "timm":
        if not args.timm_name:
            raise ConfigError("--from timm needs --timm-name (the timm architecture of the checkpoint)")
        if not Path(source).is_file():
            raise CheckpointError(f"{source}: no such file")
        return f"timm:{args.timm_name}@{source}"
    if args.kind == "hf" and not source.startswith("hf:"):
        return f"hf:{source}"
    if args.kind in ("npz", "vitlab") and kind_of(source) not in ("npz", "safetensors", "run_dir"):
        raise ConfigError(f"--from {args.kind}: {source} is not a local weights file")
    return source


def read_source(args: argparse.Namespace) -> nn.Module:
    return resolve(source_ref(args), model_name=args.model).build()


def run(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    if dest.suffix not in (".npz", ".safetensors"):
        raise ConfigError(f"output {dest} must end in .safetensors or .npz")
    model = read_source(args)
    if dest.suffix == ".npz":
        save_npz(model, dest)
    else:
        save_model(model, dest)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {dest} ({type(model).__name__}, {params / 1e6:.2f}M parameters)")
    return 0
