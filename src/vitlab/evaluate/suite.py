"""A VTAB-style multi-task suite: fine-tune and/or few-shot probe one model on many small tasks, report by group.

VTAB (Zhai et al. 2019), as used in the paper's Section 4.2 and Figure 2: 19 tasks of 1,000 training examples
each, grouped into Natural, Specialized and Structured; the score of a model is the mean accuracy over tasks,
also shown per group. The paper fine-tunes on each task with SGD, lr 0.01, 2,500 steps (Table 4, "VTAB").

A suite is a YAML file (packaged ones live in ``vitlab/suites/``)::

    name: small
    train_examples: 1000        # VTAB-1k: the training subset of every task (class proportions kept)
    test_examples: 2000         # cap on each test set for quick runs (null: the whole test split)
    img_size: 32
    tasks:
      - {name: digits, group: natural, source: digits}
      - {name: sprites_count, group: structured, source: sprites_count, options: {num_examples: 1000}}
    finetune:
      config: vtab-finetune     # a training preset; `overrides` scale it (to a CPU, say)
      overrides: {train.steps: 200, train.batch_size: 64}
    fewshot: {shots: [5, 10], seeds: [0, 1, 2], l2: 1024, representation: pre_logits}

Every task becomes a fine-tuning run in ``OUT/<task>/finetune`` (resumed if it exists, so re-running a suite
reuses finished tasks) and a few-shot result in ``OUT/<task>/fewshot.json``; ``OUT/suite.json`` and
``OUT/suite-report.md`` hold the grouped table.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import yaml

from vitlab.config import load_config
from vitlab.data import get_source
from vitlab.errors import ConfigError, ResumeMismatchError
from vitlab.evaluate.fewshot import fewshot_evaluate
from vitlab.models.registry import create_model
from vitlab.train import finetune
from vitlab.train.distributed import pick_device
from vitlab.weights import resolve

log = logging.getLogger(__name__)

MODES = ("finetune", "fewshot")
SUITE_KEYS = {"name", "description", "train_examples", "test_examples", "img_size", "tasks", "finetune", "fewshot"}
TASK_KEYS = {"name", "group", "source", "options", "train_examples", "test_examples"}


@dataclass
class Task:
    name: str
    group: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    train_examples: int | None = None  # None: the suite's
    test_examples: int | None = None


@dataclass
class FewShotSpec:
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    l2: float | str = 2.0**10
    representation: str = "pre_logits"


@dataclass
class Suite:
    name: str
    tasks: list[Task]
    train_examples: int | None = 1000
    test_examples: int | None = None
    img_size: int | None = None
    description: str = ""
    finetune_config: str = "vtab-finetune"
    finetune_overrides: dict[str, Any] = field(default_factory=dict)
    fewshot: FewShotSpec = field(default_factory=FewShotSpec)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(task.group for task in self.tasks))


# ---- reading suites ----------------------------------------------------------------------------------------
def list_suites() -> list[str]:
    root = resources.files("vitlab").joinpath("suites")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """A packaged suite by name (``small``) or a suite YAML file."""
    path = Path(name_or_path)
    if path.is_file():
        text, origin = path.read_text(), str(path)
    else:
        entry = resources.files("vitlab").joinpath("suites", f"{name_or_path}.yaml")
        if not entry.is_file():
            raise ConfigError(f"--suite {str(name_or_path)!r} is neither a file nor a packaged suite; "
                              f"packaged: {', '.join(list_suites())}")
        text, origin = entry.read_text(), f"suites/{name_or_path}.yaml"
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: not valid YAML ({str(error).splitlines()[0]})") from None
    return suite_from_dict(tree, origin)


def suite_from_dict(tree: Any, origin: str = "suite") -> Suite:
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{origin}: expected a mapping with 'name' and 'tasks'")
    unknown = sorted(set(tree) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(SUITE_KEYS))}")
    raw_tasks = tree.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ConfigError(f"{origin}: 'tasks' must be a non-empty list of {{name, group, source}}")
    tasks = [_task(item, f"{origin}: tasks[{i}]") for i, item in enumerate(raw_tasks)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: task names must be unique, got {names}")
    finetune = tree.get("finetune") or {}
    fewshot = tree.get("fewshot") or {}
    if not isinstance(finetune, Mapping) or set(finetune) - {"config", "overrides"}:
        raise ConfigError(f"{origin}: 'finetune' takes 'config' (a preset) and 'overrides' (a mapping)")
    if not isinstance(fewshot, Mapping) or set(fewshot) - {"shots", "seeds", "l2", "representation"}:
        raise ConfigError(f"{origin}: 'fewshot' takes shots, seeds, l2 and representation")
    spec = FewShotSpec()
    if "shots" in fewshot:
        spec.shots = [_positive_int(v, f"{origin}: fewshot.shots") for v in _listed(fewshot["shots"])]
    if "seeds" in fewshot:
        spec.seeds = [int(v) for v in _listed(fewshot["seeds"])]
    if "l2" in fewshot:
        spec.l2 = fewshot["l2"] if fewshot["l2"] == "dev" else float(fewshot["l2"])
    if "representation" in fewshot:
        spec.representation = str(fewshot["representation"])
    overrides = finetune.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{origin}: finetune.overrides must be a mapping of config keys")
    return Suite(
        name=str(tree.get("name", Path(origin).stem)),
        description=str(tree.get("description", "")),
        tasks=tasks,
        train_examples=_optional_int(tree.get("train_examples", 1000), f"{origin}: train_examples"),
        test_examples=_optional_int(tree.get("test_examples"), f"{origin}: test_examples"),
        img_size=_optional_int(tree.get("img_size"), f"{origin}: img_size"),
        finetune_config=str(finetune.get("config", "vtab-finetune")),
        finetune_overrides=dict(overrides),
        fewshot=spec,
    )


def _task(item: Any, where: str) -> Task:
    if not isinstance(item, Mapping) or not {"name", "group", "source"} <= set(item):
        raise ConfigError(f"{where}: each task needs name, group and source")
    unknown = sorted(set(item) - TASK_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TASK_KEYS))}")
    options = item.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}: options must be a mapping of source options")
    return Task(str(item["name"]), str(item["group"]), str(item["source"]), dict(options),
                _optional_int(item.get("train_examples"), f"{where}: train_examples"),
                _optional_int(item.get("test_examples"), f"{where}: test_examples"))


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {value!r} is not a positive integer")
    return value


def _optional_int(value: Any, where: str) -> int | None:
    return None if value is None else _positive_int(value, where)


# ---- running -----------------------------------------------------------------------------------------------
@dataclass
class TaskResult:
    task: str
    group: str
    finetune_accuracy: float | None = None
    fewshot: dict[int, float] = field(default_factory=dict)  # shots -> mean accuracy over seeds
    fewshot_std: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "group": self.group, "finetune_accuracy": self.finetune_accuracy,
                "fewshot": {str(k): v for k, v in self.fewshot.items()},
                "fewshot_std": {str(k): v for k, v in self.fewshot_std.items()}, "seconds": round(self.seconds, 2)}


def task_data_options(suite: Suite, task: Task) -> dict[str, Any]:
    """``data.options`` of the ``subset`` source that gives this task's VTAB-style train and test sets."""
    train_n = task.train_examples or suite.train_examples
    test_n = task.test_examples or suite.test_examples
    options: dict[str, Any] = {"source": task.source, "size": train_n or 10**12, "seed": 0,
                               "options": dict(task.options)}
    if test_n:
        options["cap"] = test_n
    return options


def finetune_config(suite: Suite, task: Task, *, checkpoint: str | None, model_name: str | None,
                    in_chans: int, config: str | None = None, overrides: Iterable[str] = ()):
    """The run config of one task: the preset, the suite's scale-down (unless ``config`` replaces the preset),
    the task's data, the model, then the user's ``key=value`` overrides."""
    keys: dict[str, Any] = dict(suite.finetune_overrides) if config is None else {}
    keys.update({
        "task": "finetune",
        "data.dataset": "subset",
        "data.options": task_data_options(suite, task),
        "data.train_split": "train",
        "data.test_split": "test",
        "data.in_chans": in_chans,
        "sweep.grid": {},
    })
    if suite.img_size:
        keys["data.img_size"] = suite.img_size
    if checkpoint:
        keys.update({"model.init_from": str(checkpoint), "model.name": None})
    else:
        keys.update({"model.init_from": None, "model.name": model_name})
    cfg = load_config(config or suite.finetune_config, keys)  # one validation (building a model is not free)
    overrides = list(overrides)
    return cfg.override(overrides) if overrides else cfg


def _frozen_model(cfg, checkpoint: str | None) -> torch.nn.Module:
    """The few-shot model at the task's resolution: the checkpoint, or the config's architecture at random."""
    size = cfg.data.img_size
    if checkpoint:
        return resolve(checkpoint).build(img_size=size)
    torch.manual_seed(cfg.seed)
    kwargs = dict(cfg.model.overrides)
    return create_model(cfg.model.name, num_classes=0, img_size=size, in_chans=cfg.data.in_chans or 3,
                               **kwargs)


def model_in_chans(checkpoint: str | None, model_name: str | None, overrides: Iterable[str] = ()) -> int:
    """Input channels of the evaluated model (a grey task is repeated to 3 channels for an RGB model)."""
    if checkpoint:
        return resolve(checkpoint).in_chans
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() in ("data.in_chans", "in_chans"):
            return int(value)
    return 3


def run_suite(suite: Suite, out_dir: str | os.PathLike, *, checkpoint: str | None = None,
              model_name: str | None = None, modes: Sequence[str] = MODES, config: str | None = None,
              overrides: Iterable[str] = (), tasks: Sequence[str] | None = None,
              device: str = "auto") -> list[TaskResult]:
    """Run every task of ``suite`` (or those named in ``tasks``) and write the grouped report to ``out_dir``."""
    if not checkpoint and not model_name:
        raise ConfigError("suite: give a checkpoint (pre-trained weights) or a model name (random init)")
    bad_modes = sorted(set(modes) - set(MODES))
    if bad_modes or not modes:
        raise ConfigError(f"suite: mode(s) {bad_modes or modes} unknown; expected {', '.join(MODES)}")
    overrides = list(overrides)
    chosen = suite.tasks
    if tasks:
        unknown = sorted(set(tasks) - {t.name for t in suite.tasks})
        if unknown:
            raise ConfigError(f"suite {suite.name}: no task(s) {', '.join(unknown)}; tasks: "
                              f"{', '.join(t.name for t in suite.tasks)}")
        chosen = [t for t in suite.tasks if t.name in tasks]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    in_chans = model_in_chans(checkpoint, model_name, overrides)
    results = []
    for task in chosen:
        start = time.perf_counter()
        cfg = finetune_config(suite, task, checkpoint=checkpoint, model_name=model_name, in_chans=in_chans,
                              config=config, overrides=overrides)
        result = TaskResult(task.name, task.group)
        if "finetune" in modes:
            log.info("suite %s: fine-tuning on %s (%s)", suite.name, task.name, task.group)
            try:
                summary = finetune(cfg, out / task.name / "finetune", resume=True)
            except ResumeMismatchError as error:
                raise ConfigError(
                    f"suite task {task.name}: {out / task.name / 'finetune'} was fine-tuned with other settings "
                    f"({', '.join(error.keys)}); rerun with the checkpoint, --finetune-config and key=value "
                    "overrides it was made with, or use another --out (or delete that folder to retrain the task)"
                ) from None
            if summary.get("interrupted"):
                raise KeyboardInterrupt
            result.finetune_accuracy = float(summary["metrics"]["test_accuracy"])
        if "fewshot" in modes:
            result.fewshot, result.fewshot_std = _task_fewshot(suite, task, cfg, checkpoint, out, device)
        result.seconds = time.perf_counter() - start
        results.append(result)
    settings = {"checkpoint": str(checkpoint) if checkpoint else None, "model": model_name,
                "finetune_config": config, "overrides": overrides}
    write_report(suite, results, out, modes, settings)
    return results


def _task_fewshot(suite, task, cfg, checkpoint, out, device):
    """Few-shot accuracies of one task (cached in OUT/<task>/fewshot.json with the settings that made them)."""
    spec = suite.fewshot
    settings = {"checkpoint": str(checkpoint), "model": cfg.model.name, "options": cfg.data.options,
                "img_size": cfg.data.img_size, "shots": spec.shots, "seeds": spec.seeds, "l2": spec.l2,
                "representation": spec.representation}
    cache = out / task.name / "fewshot.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("settings") == json.loads(json.dumps(settings)):
            report = saved["report"]["results"]
            return ({r["shots"]: r["mean"] for r in report}, {r["shots"]: r["std"] for r in report})
    log.info("suite %s: few-shot on %s", suite.name, task.name)
    torch_device = pick_device(device)
    model = _frozen_model(cfg, checkpoint).to(torch_device)
    train = get_source("subset", split="train", **cfg.data.options)
    test = get_source("subset", split="test", **cfg.data.options)
    report = fewshot_evaluate(model, train, test, shots=spec.shots, seeds=spec.seeds, l2=spec.l2,
                              representation_name=spec.representation, img_size=cfg.data.img_size,
                              in_chans=cfg.data.in_chans, device=torch_device, dataset=task.name)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "report": report.to_dict()}, indent=2))
    os.replace(tmp, cache)
    return ({r.shots: r.mean for r in report.results}, {r.shots: r.std for r in report.results})


# ---- the grouped report ------------------------------------------------------------------------------------
def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def grouped_table(suite: Suite, results: Sequence[TaskResult], modes: Sequence[str] = MODES) -> str:
    """Markdown: one row per task, a mean row per group (after its tasks), the mean over all tasks last.

    As in VTAB, the overall mean is over tasks (not over groups), and accuracies are in percent.
    """
    columns: list[tuple[str, Any]] = []
    if "finetune" in modes:
        columns.append(("fine-tune", lambda r: r.finetune_accuracy))
    if "fewshot" in modes:
        for k in suite.fewshot.shots:
            columns.append((f"{k}-shot", lambda r, k=k: r.fewshot.get(k)))

    def cells(values: Sequence[float | None]) -> str:
        return " | ".join("-" if v is None else f"{100 * v:.1f}" for v in values)

    head = "| task | group | " + " | ".join(name for name, _ in columns) + " |"
    lines = [head, "|---|---|" + "---:|" * len(columns)]
    by_group: dict[str, list[TaskResult]] = {}
    for r in results:
        by_group.setdefault(r.group, []).append(r)
    for group, members in by_group.items():
        for r in members:
            lines.append(f"| {r.task} | {group} | {cells([get(r) for _, get in columns])} |")
        means = [_mean(get(r) for r in members) for _, get in columns]
        lines.append(f"| **{group} mean** ({len(members)} tasks) | {group} | {cells(means)} |")
    overall = [_mean(get(r) for r in results) for _, get in columns]
    lines.append(f"| **mean** ({len(results)} tasks) | all | {cells(overall)} |")
    return "\n".join(lines)


def _result_from_dict(data: Mapping[str, Any]) -> TaskResult:
    return TaskResult(data["task"], data["group"], data.get("finetune_accuracy"),
                      {int(k): v for k, v in (data.get("fewshot") or {}).items()},
                      {int(k): v for k, v in (data.get("fewshot_std") or {}).items()}, float(data.get("seconds", 0)))


def merge_results(suite: Suite, results: Sequence[TaskResult], out: Path, modes: Sequence[str],
                  settings: Mapping[str, Any]) -> tuple[list[TaskResult], list[str]]:
    """This run's results plus those an earlier run in ``out`` made with the same settings (a rerun of one task
    must not drop the others from the report); ``(results in suite order, modes covered)``."""
    merged: dict[str, TaskResult] = {}
    covered = set(modes)
    previous_path = out / "suite.json"
    if previous_path.is_file():
        try:
            previous = json.loads(previous_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        same = previous.get("suite") == suite.name and previous.get("settings") == json.loads(json.dumps(settings))
        if previous and not same:
            log.warning("suite: %s was made with another checkpoint, model or overrides; the report now holds only "
                        "this run's tasks", previous_path)
        if same:
            merged = {r["task"]: _result_from_dict(r) for r in previous.get("results", [])}
            covered |= set(previous.get("modes", []))
    for result in results:
        old = merged.get(result.task)
        if old is not None:  # keep what this run did not redo (e.g. the few-shot numbers of a fine-tune rerun)
            if result.finetune_accuracy is None:
                result.finetune_accuracy = old.finetune_accuracy
            if not result.fewshot:
                result.fewshot, result.fewshot_std = old.fewshot, old.fewshot_std
        merged[result.task] = result
    order = [t.name for t in suite.tasks if t.name in merged]
    return [merged[name] for name in order], [m for m in MODES if m in covered]


def write_report(suite: Suite, results: Sequence[TaskResult], out: Path, modes: Sequence[str],
                 settings: Mapping[str, Any] | None = None) -> str:
    """``OUT/suite-report.md`` and ``OUT/suite.json``: this run's tasks merged with earlier ones of the same
    settings, and the settings (checkpoint or model, fine-tuning preset, overrides) that made them."""
    settings = dict(settings or {})
    results, modes = merge_results(suite, results, out, modes, settings)
    table = grouped_table(suite, results, modes)
    made_with = ", ".join(f"{key} `{value}`" for key, value in settings.items() if value not in (None, [], {}))
    text = (f"# Suite `{suite.name}`\n\n{suite.description.strip()}\n\n"
            + (f"Made with {made_with}.\n\n" if made_with else "")
            + f"Accuracy in % on each task's test set ({suite.train_examples} training examples per task; "
            f"few-shot: mean over seeds {suite.fewshot.seeds}).\n\n{table}\n")
    for name, content in (("suite-report.md", text),
                          ("suite.json", json.dumps({"suite": suite.name, "modes": list(modes), "settings": settings,
                                                     "results": [r.to_dict() for r in results]}, indent=2))):
        tmp = out / (name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, out / name)
    return table
