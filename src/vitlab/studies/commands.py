"""`vitlab study STUDY --out DIR [key=value ...]`: the data-size (Figure 4) and scaling (Figure 5) studies."""
from __future__ import annotations

import argparse

import yaml

from vitlab.errors import ConfigError
from vitlab.studies.report import markdown_table
from vitlab.studies.study import load_study, run_study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="a study preset (data-size-fmnist, scaling-fmnist) or a YAML file")
    parser.add_argument("overrides", nargs="*", help="top-level study keys, e.g. sizes=[1000,5000] base=fmnist-vit-tiny")
    parser.add_argument("--out", required=True, help="study directory (runs/, study.md, study.csv, study.png)")
    parser.add_argument("--fresh", action="store_true", help="retrain points that already finished")


def run(args: argparse.Namespace) -> int:
    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"study override {item!r} is not key=value")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    study = load_study(args.study, overrides)
    points = run_study(study, args.out, resume=not args.fresh)
    print(markdown_table(study, points))
    print(f"\nwrote {args.out}/study.md, study.csv, study.json, study.png")
    return 0
