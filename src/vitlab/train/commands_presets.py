"""`vitlab presets [PATTERN]`: every packaged preset, what it reproduces, its model, length and expected time.

The description comes from the preset itself (its top-level ``meta:`` section: ``reproduces``, ``expected_time``),
model and length from the resolved config, so the list cannot drift from what ``--config NAME`` runs.
"""
from __future__ import annotations

import argparse
import fnmatch

import yaml

from vitlab.config import list_presets, load_config, preset_text
from vitlab.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over preset names, e.g. 'jft-*'")


def preset_row(name: str) -> dict[str, str]:
    """One preset as the table shows it (a preset's ``base`` chain is resolved; its ``meta`` is its own)."""
    meta = (yaml.safe_load(preset_text(name)) or {}).get("meta") or {}
    cfg = load_config(name)
    if cfg.train.steps is not None:
        length = f"{cfg.train.steps:,} steps"
    else:
        length = f"{cfg.train.epochs:g} epochs"
    model = cfg.model.name or "(from init_from)"
    return {"name": name, "task": cfg.task, "model": model, "length": length,
            "reproduces": str(meta.get("reproduces", "-")), "expected_time": str(meta.get("expected_time", "-"))}


def run(args: argparse.Namespace) -> int:
    names = [name for name in list_presets() if fnmatch.fnmatch(name, args.pattern)]
    if not names:
        raise ConfigError(f"no preset matches {args.pattern!r}; presets: {', '.join(list_presets())}")
    rows = [preset_row(name) for name in names]
    widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in ("name", "task", "model", "length")}
    header = "  ".join(f"{key:<{widths[key]}}" for key in widths)
    print(f"{header}  reproduces / expected time")
    for row in rows:
        left = "  ".join(f"{row[key]:<{widths[key]}}" for key in widths)
        print(f"{left}  {row['reproduces']}")
        print(f"{'':<{len(left)}}  time: {row['expected_time']}")
    print("\nrun one: vitlab pretrain --config NAME --out runs/NAME  (fine-tuning presets: vitlab finetune ...)")
    return 0
