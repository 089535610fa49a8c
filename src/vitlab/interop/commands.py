"""`vitlab convert SRC DST`: between our safetensors, the official .npz layout, timm and Hugging Face weights.

The output format follows DST's suffix: ``.safetensors`` (ours, config in metadata) or ``.npz`` (official layout).
Sources are local files only; nothing is downloaded:
  SRC.npz                      an official checkpoint (architecture read from its keys, or --model)
  SRC.safetensors              a vitlab checkpoint
  --from timm --timm-name N    a timm checkpoint file for timm architecture N (.pth / .safetensors)
  --from hf                    a local Hugging Face model directory (config.json + weights)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from vitlab.errors import CheckpointError, ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="source weights: .npz, .safetensors, a timm checkpoint or an HF directory")
    parser.add_argument("dest", help="output file: .safetensors (vitlab) or .npz (official layout)")
    parser.add_argument("--from", dest="kind", choices=("auto", "npz", "vitlab", "timm", "hf"), default="auto")
    parser.add_argument("--model", help="vitlab model name for an .npz whose architecture should not be inferred")
    parser.add_argument("--timm-name", help="timm architecture name, with --from timm")


def read_source(args: argparse.Namespace) -> nn.Module:
    source = Path(args.source)
    kind = args.kind
    if kind == "auto":
        kind = {".npz": "npz", ".safetensors": "vitlab"}.get(source.suffix, "hf" if source.is_dir() else "")
        if not kind:
            raise ConfigError(f"cannot tell the format of {source}; pass --from npz|vitlab|timm|hf")
    if not source.exists():
        raise CheckpointError(f"{source}: no such file or directory")
    if kind == "npz":
        from vitlab.interop.official import load_npz_any

        return load_npz_any(source, model_name=args.model)
    if kind == "vitlab":
        from vitlab.models.weights import load_model

        return load_model(source)
    if kind == "timm":
        import timm

        from vitlab.interop.timm import from_timm

        if not args.timm_name:
            raise ConfigError("--from timm needs --timm-name (the timm architecture of the checkpoint)")
        try:
            timm_model = timm.create_model(args.timm_name, pretrained=False, checkpoint_path=str(source))
        except RuntimeError as error:  # unknown architecture, or a checkpoint that does not fit it
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
            raise CheckpointError(f"{source}: does not load as timm model {args.timm_name!r} ({detail})") from None
        return from_timm(timm_model)
    from transformers import AutoModel, AutoModelForImageClassification

    from vitlab.interop.hf import from_hf

    try:
        hf_model = AutoModelForImageClassification.from_pretrained(source, local_files_only=True)
    except ValueError:
        hf_model = AutoModel.from_pretrained(source, local_files_only=True)
    return from_hf(hf_model)


def run(args: argparse.Namespace) -> int:
    model = read_source(args)
    dest = Path(args.dest)
    if dest.suffix == ".npz":
        from vitlab.interop.official import save_npz

        save_npz(model, dest)
    elif dest.suffix == ".safetensors":
        from vitlab.models.weights import save_model

        save_model(model, dest)
    else:
        raise ConfigError(f"output {dest} must end in .safetensors or .npz")
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {dest} ({type(model).__name__}, {params / 1e6:.2f}M parameters)")
    return 0
