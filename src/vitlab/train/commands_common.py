"""Arguments and config loading shared by ``vitlab pretrain`` and ``vitlab finetune``."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vitlab.config import RunConfig, list_presets, load_config
from vitlab.errors import ConfigError, VitlabError
from vitlab.report import build_report
from vitlab.train.distributed import env_world

log = logging.getLogger(__name__)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PRESET_OR_FILE",
                        help="a preset name (" + ", ".join(list_presets()[:4]) + ", ...) or a YAML file; "
                             "with --resume it defaults to the run's saved config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.lr=0.01 train.steps=200 model.depth=6")
    parser.add_argument("--out", required=True, metavar="DIR", help="the run directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last good checkpoint")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    saved = Path(args.out) / "config.yaml"
    if args.config is None:
        if args.resume and saved.exists():
            return load_config(saved, args.overrides)
        raise ConfigError("--config PRESET_OR_FILE is required (except with --resume of an existing run)")
    return load_config(args.config, args.overrides)


def exit_status(summary: dict) -> int:
    """0 when the run finished, 128 + signal when SIGINT / SIGTERM stopped it (after saving)."""
    if summary.get("interrupted"):
        return 128 + int(summary.get("signal", 15))
    return 0


def print_summary(summary: dict, out: str) -> None:
    if env_world()[0] != 0 or summary.get("interrupted"):
        return
    log.debug("summary: %s", json.dumps(summary))
    log.info("summary written to %s", Path(out) / "summary.json")


def write_run_report(out: str) -> None:
    """``OUT/report.html`` (and its figures) at the end of a run, on rank 0; a report that cannot be built is a
    warning, not a failed run (``vitlab report OUT`` rebuilds it)."""
    if env_world()[0] != 0:
        return
    try:
        log.info("report written to %s", build_report(out))
    except VitlabError as error:
        log.warning("no report for %s: %s", out, error)
