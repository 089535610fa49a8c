"""`vitlab study NAME --out DIR [--quick] [key=value ...]` and `vitlab study --list`: the paper's studies."""
from __future__ import annotations

import argparse
import sys

import yaml

from vitlab.errors import ConfigError
from vitlab.studies.claims import study_claims
from vitlab.studies.results import claims_table, variant_table
from vitlab.studies.runner import StudyInterrupted, run_study
from vitlab.studies.study import describe_presets, load_study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", nargs="?", help="a study preset (see --list) or a YAML file")
    parser.add_argument("overrides", nargs="*", help="top-level study keys, e.g. seeds=[0] sizes=[1000,5000]")
    parser.add_argument("--out", help="study directory (runs/, study.md, study.csv, study.json, study.png + .svg, report.html)")
    parser.add_argument("--quick", action="store_true", help="the preset's quick size: a first look, one seed")
    parser.add_argument("--list", action="store_true", help="list the shipped studies and what each reproduces")
    parser.add_argument("--fresh", action="store_true", help="retrain points that already finished")


def run(args: argparse.Namespace) -> int:
    if args.list:
        rows = describe_presets()
        width = max(len(name) for name, _, _ in rows)
        for name, kind, title in rows:
            print(f"{name:<{width}}  {title}")
        return 0
    if not args.study:
        raise ConfigError("vitlab study: name a study (vitlab study --list shows them) or pass --list")
    if not args.out:
        raise ConfigError("vitlab study: --out DIR is required")
    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"study override {item!r} is not key=value")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    study = load_study(args.study, overrides, quick=args.quick)
    try:
        points = run_study(study, args.out, resume=not args.fresh)
    except StudyInterrupted as stopped:
        print(f"vitlab study: {stopped}", file=sys.stderr)
        return 1
    print(variant_table(points))
    print()
    print(claims_table(study_claims(study, points)))
    print(f"\nwrote {args.out}/study.md, study.csv, study.json" + (", study.png, study.svg" if study.kind in ("data_size", "scaling") else "") + ", report.html")
    return 0
