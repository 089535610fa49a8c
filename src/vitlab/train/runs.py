"""The Python face of training: ``pretrain``, ``finetune`` (with the paper's learning-rate sweep), ``evaluate``.

``finetune(cfg, out, sweep="lr=0.001,0.003,0.01,0.03")`` follows Appendix B.1.1 of the paper: each value trains
a sub-run on the training split minus a dev split (the paper's share for the dataset, else 10%), the best dev
accuracy picks the value, and the winner is trained again on the whole training split (``sweep.refit``) and
tested. Sub-runs live in ``OUT/sweep/<key>=<value>/`` and the refit in ``OUT/final/``; the parent ``OUT/``
gets ``config.yaml``, ``summary.json`` (winner's test accuracy, every dev accuracy) and
``checkpoints/best.safetensors`` (a copy of the winner's weights). Each sub-run resumes on its own, so
``--resume`` continues a sweep where it stopped.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from vitlab.config import RunConfig, SweepSection, _as_list, canonical_key  # _as_list: the overrides' value parsing
from vitlab.errors import ConfigError
from vitlab.progress import results_table
from vitlab.train import recipes
from vitlab.train.distributed import env_world
from vitlab.train.engine import run_training
from vitlab.train.evaluation import evaluate_checkpoint
from vitlab.train.rundir import RunDir

log = logging.getLogger(__name__)


def pretrain(cfg: RunConfig, out_dir: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """Pre-train (or train from scratch) as ``cfg`` says; returns summary.json's content."""
    if cfg.task != "pretrain":
        cfg = cfg.override({"task": "pretrain"})
    return run_training(cfg, out_dir, resume=resume, label="pretrain")


def finetune(
    cfg: RunConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    sweep: str | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cfg.model.init_from`` (or train ``cfg.model.name`` from scratch) on ``cfg.data``.

    ``sweep``: ``"lr=0.001,0.003"`` / ``{"lr": [...]}``; None uses ``cfg.sweep.grid`` (the presets carry
    Table 4's grid); an empty grid trains one run.
    """
    if cfg.task != "finetune":
        cfg = cfg.override({"task": "finetune"})
    grid = parse_sweep(sweep) if sweep is not None else dict(cfg.sweep.grid)
    if grid:
        cfg = cfg.override({"sweep.grid": grid})
    if not grid:
        return run_training(cfg, out_dir, resume=resume, label="finetune")
    return _sweep(cfg, Path(out_dir), resume, grid)


def parse_sweep(spec: str | Mapping[str, Any]) -> dict[str, list[Any]]:
    """``"lr=0.001,0.003"`` (several keys separated by ';') -> ``{"optim.lr": [0.001, 0.003]}``."""
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(";"):
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(f"--sweep {spec!r}: expected key=v1,v2,... (e.g. lr=0.001,0.003,0.01,0.03)")
            key, _, values = part.partition("=")
            items.append((key.strip(), values.strip()))
    grid = {}
    for key, values in items:
        values = _as_list(values, f"--sweep {key}")
        if not values or values == [""]:
            raise ConfigError(f"--sweep {key}: no values")
        grid[canonical_key(key)] = values
    return grid


def _value_name(key: str, value: Any) -> str:
    return f"{key.split('.')[-1]}={value}"


def _sweep(cfg: RunConfig, out: Path, resume: bool, grid: dict[str, list[Any]]) -> dict[str, Any]:
    rank, _, _ = env_world()
    parent = RunDir(out, writer=rank == 0)
    if not resume and (out / "sweep").exists():
        raise ConfigError(f"--out {out} already holds a sweep; pass --resume to continue it or choose another --out")
    parent.write_text("config.yaml", cfg.to_yaml())
    fraction = cfg.data.dev_fraction if cfg.data.dev_fraction else recipes.dev_fraction(cfg.data.dataset)
    keys = list(grid)
    trials = []
    for combo in itertools.product(*(grid[key] for key in keys)):
        values = dict(zip(keys, combo))
        name = ",".join(_value_name(key, value) for key, value in values.items())
        sub_cfg = cfg.override({**values, "data.dev_fraction": fraction})
        sub_cfg.sweep = SweepSection()
        summary = run_training(sub_cfg, out / "sweep" / name, resume=resume, evaluate_test=False,
                               label=f"finetune {name}")
        if summary.get("interrupted"):
            return summary
        trials.append({"values": values, "dir": f"sweep/{name}",
                       "dev_accuracy": summary["metrics"]["dev_accuracy"], "summary": summary})
        log.info("sweep %s: dev accuracy %.4f", name, summary["metrics"]["dev_accuracy"])
    winner = max(trials, key=lambda trial: trial["dev_accuracy"])  # first of equals: the smallest value
    if cfg.sweep.refit:
        final_cfg = cfg.override({**winner["values"], "data.dev_fraction": 0.0})
        final_cfg.sweep = SweepSection()
        final = run_training(final_cfg, out / "final", resume=resume, label="finetune final")
        if final.get("interrupted"):
            return final
        final_dir = "final"
    else:
        final_cfg = cfg.override(winner["values"])
        final = _test_winner(final_cfg, out / winner["dir"])
        final_dir = winner["dir"]
    if rank == 0:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / final_dir / "checkpoints" / "best.safetensors", out / "checkpoints" / "best.safetensors")
    summary = {
        "task": "finetune",
        "model": final["model"],
        "model_spec": final.get("model_spec"),
        "dataset": cfg.data.dataset,
        "steps": final["steps"],
        "wall_seconds": round(sum(t["summary"]["wall_seconds"] for t in trials)
                              + (final["wall_seconds"] if cfg.sweep.refit else 0.0), 2),
        "images_per_second": final["images_per_second"],
        "metrics": {"test_accuracy": final["metrics"].get("test_accuracy"),
                    "dev_accuracy": winner["dev_accuracy"]},
        "img_size": final.get("img_size"),
        "init_from": cfg.model.init_from,
        "weights": "checkpoints/best.safetensors",
        "sweep": {
            "grid": grid,
            "dev_fraction": fraction,
            "refit": cfg.sweep.refit,
            "winner": winner["values"],
            "final_dir": final_dir,
            "trials": [{"values": t["values"], "dir": t["dir"], "dev_accuracy": t["dev_accuracy"]} for t in trials],
        },
    }
    parent.write_json("summary.json", summary)
    if rank == 0:
        rows = [(t["dir"].split("/")[-1] + " dev accuracy", t["dev_accuracy"]) for t in trials]
        rows.append(("winner", ",".join(_value_name(k, v) for k, v in winner["values"].items())))
        rows.append(("test accuracy", summary["metrics"]["test_accuracy"]))
        log.info("%s", results_table(rows, title="fine-tuning sweep"))
    return summary


def _test_winner(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Without refit: the winning sub-run's weights on the test split, added to its summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    if cfg.data.test_split:
        result = evaluate_checkpoint(run_dir, cfg.data.dataset, split=cfg.data.test_split,
                                     batch_size=cfg.data.eval_batch_size, device=cfg.train.device,
                                     source_options=cfg.data.options)
        summary["metrics"]["test_accuracy"] = result["accuracy"]
    return summary
