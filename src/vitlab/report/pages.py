"""One ``report.html`` per output directory: which kind of directory it is, what its page shows.

=============  ==========================================  ===============================================
kind           recognised by                               headline
=============  ==========================================  ===============================================
demo           ``demo.json``                               Table-2-style table + ``summary.json``
study          ``study.yaml`` or ``study.json``            one row per point of ``study.json``
inspection     ``inspect.json``                            ``summary.json`` (model, images, distances)
run            ``summary.json`` or ``metrics.jsonl``       ``summary.json`` (every scalar, nested keys dotted)
=============  ==========================================  ===============================================

Builders read only files (no models, no torch), so ``vitlab report DIR`` is quick and works on a copied directory.
Figures a builder draws itself (training curves, confusion matrix, the demo's few-shot curve) go to ``DIR/figures/``;
one newer than the files it is drawn from is reused, so rebuilding a page whose run has not changed is quick.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from vitlab.errors import ConfigError, DataError
from vitlab.report.confusion import confusion_figure, read_confusion
from vitlab.report.curves import read_metrics, training_curves
from vitlab.report.html import Cell, Page, Table, embed_figure, key_value_table, number_cell, write_page
from vitlab.report.study import plot_study
from vitlab.report.tensorboard import log_figures

log = logging.getLogger(__name__)

FIGURES = "figures"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as JSON ({error})") from None


def _configs(directory: Path, *names: str) -> list[dict[str, str]]:
    return [{"name": name, "text": (directory / name).read_text()} for name in names if (directory / name).is_file()]


def detect_kind(directory: str | os.PathLike) -> str:
    """The kind of output directory (see the module table); a directory of none of them is named."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory")
    if (root / "demo.json").is_file():
        return "demo"
    if (root / "study.yaml").is_file() or (root / "study.json").is_file():
        return "study"
    if (root / "inspect.json").is_file():
        return "inspection"
    if (root / "summary.json").is_file() or (root / "metrics.jsonl").is_file():
        return "run"
    raise ConfigError(f"{root}: not a vitlab run, study, inspection or demo directory "
                      "(none of summary.json, metrics.jsonl, study.yaml, inspect.json, demo.json)")


def build_report(directory: str | os.PathLike) -> Path:
    """(Re)build ``DIR/report.html`` for any kind of directory; returns its path."""
    root = Path(directory)
    page = BUILDERS[detect_kind(root)](root)
    return write_page(page, root)


# ---- runs --------------------------------------------------------------------------------------------------
def _run_question(summary: dict[str, Any], config: dict[str, Any]) -> str:
    task = summary.get("task") or config.get("task", "pretrain")
    model = summary.get("model") or (config.get("model") or {}).get("name") or "the model"
    dataset = summary.get("dataset") or (config.get("data") or {}).get("dataset") or "the data"
    if task == "finetune":
        start = summary.get("init_from") or (config.get("model") or {}).get("init_from") or model
        return (f"How well does the model of {start} transfer to {dataset} when fine-tuned "
                f"(the paper's fine-tuning recipe, Section 3.2)?")
    return f"How well does {model} learn {dataset} in {summary.get('steps', config.get('train', {}).get('steps', '?'))} steps?"


def _batch_size(config: dict[str, Any]) -> int | None:
    value = (config.get("train") or {}).get("batch_size")
    return int(value) if isinstance(value, int) and value > 0 else None


def run_figures(root: Path) -> dict[str, Path]:
    """Draw the figures a run directory's files allow (training curves, confusion matrix); name -> PNG path."""
    config = _read_yaml(root / "config.yaml")
    figures: dict[str, Path] = {}
    drawn = False
    curves = root / FIGURES / "training_curves.png"
    if (root / "metrics.jsonl").is_file():
        if _up_to_date(curves, root / "metrics.jsonl", root / "config.yaml"):
            figures["training_curves"] = curves
        else:
            png = training_curves(read_metrics(root / "metrics.jsonl"), curves.with_suffix(""),
                                  batch_size=_batch_size(config), title=root.name)
            drawn = png is not None
            if png is not None:
                figures["training_curves"] = png
    confusion = root / FIGURES / "confusion.png"
    if (root / "confusion.json").is_file():
        if _up_to_date(confusion, root / "confusion.json"):
            figures["confusion"] = confusion
        else:
            classes, matrix = read_confusion(root / "confusion.json")
            figures["confusion"] = confusion_figure(classes, matrix, confusion.with_suffix(""))
            drawn = True
    if drawn and (root / "tensorboard").is_dir():
        summary = _json(root / "summary.json") if (root / "summary.json").is_file() else {}
        log_figures(root / "tensorboard", {name: str(p) for name, p in figures.items()}, step=int(summary.get("steps", 0)))
    return figures


def _up_to_date(png: Path, *sources: Path) -> bool:
    """A figure (PNG and SVG) newer than every file it is drawn from need not be drawn again."""
    svg = png.with_suffix(".svg")
    if not (png.is_file() and svg.is_file()):
        return False
    oldest = min(png.stat().st_mtime_ns, svg.stat().st_mtime_ns)
    return all(oldest >= source.stat().st_mtime_ns for source in sources if source.is_file())


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({error})") from None
    return data if isinstance(data, dict) else {}


CAPTIONS = {
    "training_curves": ("Training curves", "Loss, learning rate and accuracy against optimiser steps (images seen on "
                        "the top axis), and loss against wall time, from metrics.jsonl."),
    "confusion": ("Confusion matrix", "Rows: true class; columns: predicted class; colour: share of the true class."),
}


def build_run_page(root: Path) -> Page:
    summary = _json(root / "summary.json") if (root / "summary.json").is_file() else {}
    config = _read_yaml(root / "config.yaml")
    page = Page("run", f"Run {root.name}", _run_question(summary, config), str(root),
                configs=_configs(root, "config.yaml"))
    if summary:
        page.headline = key_value_table(summary, caption="summary.json", skip=("sweep",))
        accuracy = (summary.get("metrics") or {}).get("test_accuracy")
        if isinstance(accuracy, (int, float)):
            page.notes.append(f"Test accuracy {100 * accuracy:.2f}% after {summary.get('steps', '?')} steps "
                              f"({summary.get('wall_seconds', 0) / 60:.1f} wall minutes).")
            page.verdict_first = True
        if summary.get("interrupted"):
            page.notes.append("The run was interrupted; resume it with --resume.")
    else:
        page.missing_headline = "summary.json is written when the run finishes."
    for name, png in run_figures(root).items():
        title, caption = CAPTIONS[name]
        page.figures.append(embed_figure(png, title, caption, root))
    sweep = summary.get("sweep") if summary else None
    if sweep:
        rows = []
        for trial in sweep.get("trials", []):
            trial_dir = root / trial["dir"]
            href = _stage_report(trial_dir, root)
            values = ", ".join(f"{k}={v}" for k, v in trial["values"].items())
            rows.append([Cell(values), number_cell(trial["dev_accuracy"], f"sweep.{trial['dir']}.dev_accuracy"),
                         Cell("winner" if trial["values"] == sweep.get("winner") else ""),
                         Cell(trial["dir"], href=href)])
            curves = trial_dir / FIGURES / "training_curves.png"
            if curves.is_file():
                page.figures.append(embed_figure(curves, f"Training curves of the sweep's {values} run",
                                                 f"From {trial['dir']}/metrics.jsonl.", root))
        page.tables.append(Table(["values", "dev accuracy", "", "run"], rows,
                                 f"Sweep on a {100 * sweep.get('dev_fraction', 0):.0f}% dev split", id="sweep"))
    init_from = summary.get("init_from") if summary else None
    if init_from:
        origin = _run_dir_of(Path(str(init_from)))
        if origin is not None:
            page.links.append({"label": f"pre-training run {origin.name}", "href": _stage_report(origin, root),
                               "note": "the checkpoint this run starts from"})
    for name in ("summary.json", "metrics.jsonl", "config.yaml", "bad_files.txt", "confusion.json"):
        if (root / name).is_file():
            page.links.append({"label": name, "href": name, "note": ""})
    return page


def _run_dir_of(path: Path) -> Path | None:
    """The run directory a checkpoint path belongs to (itself, or RUN for RUN/checkpoints/x.safetensors)."""
    for candidate in (path, path.parent, path.parent.parent):
        if candidate.is_dir() and (candidate / "summary.json").is_file():
            return candidate
    return None


def _stage_report(stage: Path, page_dir: Path) -> str:
    """Build ``stage/report.html`` when the stage is a directory vitlab can report on; the link to it."""
    target = stage / "report.html"
    try:
        build_report(stage)
    except (ConfigError, DataError) as error:
        log.debug("no report for %s: %s", stage, error)
        target = stage / "summary.json" if (stage / "summary.json").is_file() else stage
    return os.path.relpath(target, page_dir)


# ---- studies -----------------------------------------------------------------------------------------------
STUDY_QUESTIONS = {
    "data_size": "Does the amount of pre-training data decide whether ResNets or ViTs transfer better "
                 "(the paper's Figures 3 and 4: ResNets win on small sets, ViTs overtake them as data grows)?",
    "scaling": "Which architecture gives the best transfer for a given pre-training compute "
               "(the paper's Figure 5: ViTs dominate ResNets on the performance/compute trade-off)?",
}


def build_study_page(root: Path) -> Page:
    study = _read_yaml(root / "study.yaml")
    question = study.get("question") or STUDY_QUESTIONS.get(study.get("kind", ""), "What does this study measure?")
    page = Page("study", f"Study {root.name}" + (f" ({study['kind']})" if study.get("kind") else ""), question,
                str(root), configs=_configs(root, "study.yaml"))
    points = _json(root / "study.json") if (root / "study.json").is_file() else []
    if isinstance(points, dict):
        points = points.get("points", [])
    if points:
        page.headline = _points_table(points, root)
    else:
        page.missing_headline = "study.json is written when the study finishes."
    if (root / "summary.json").is_file():
        page.tables.append(key_value_table(_json(root / "summary.json"), caption="summary.json"))
    for png in sorted(list(root.glob("*.png")) + list((root / FIGURES).glob("*.png"))):
        page.figures.append(embed_figure(png, png.stem.replace("_", " ").capitalize(),
                                         "Drawn by the study (log x axis, one line per model, error bars over seeds).",
                                         root))
    for name in ("study.md", "study.csv", "study.json", "study.yaml"):
        if (root / name).is_file():
            page.links.append({"label": name, "href": name, "note": ""})
    return page


def _points_table(points: list[dict[str, Any]], root: Path) -> Table:
    """One row per point: every scalar field (nested dicts such as ``fewshot`` flattened), run linked."""
    columns: list[str] = []
    flat_points = []
    for point in points:
        flat = {}
        for key, value in point.items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
            elif not isinstance(value, list):
                flat[key] = value
        flat_points.append(flat)
        columns += [key for key in flat if key not in columns]
    rows = []
    for index, flat in enumerate(flat_points):
        row = []
        for key in columns:
            value = flat.get(key)
            if key == "run_dir" and value:
                run = Path(value) if Path(value).is_absolute() else root / value
                if (run / "pretrain" / "summary.json").is_file():  # a study point keeps its run in pretrain/
                    run = run / "pretrain"
                row.append(Cell(Path(value).name, href=_stage_report(run, root) if run.is_dir() else None))
            else:
                row.append(number_cell(value, f"points.{index}.{key}"))
        rows.append(row)
    return Table(columns, rows, "study.json: one row per point", row_headers=False)


# ---- inspections -------------------------------------------------------------------------------------------
INSPECTION_FIGURES = {
    "attention_rollout": ("Attention rollout (paper Figure 6)", "Each input beside itself under the class token's "
                          "attention rollout: heads averaged, identity added for the residual path, layers multiplied."),
    "embedding_filters": ("Embedding filters (paper Figure 7, left)", "Principal components of the patch-embedding "
                          "filters (for a hybrid: of the ResNet root's convolution), each scaled to its own range."),
    "position_similarity": ("Position embedding similarity (paper Figure 7, centre)", "Tile (row, column) shows the "
                            "cosine similarity of that patch's position embedding with every other patch's."),
    "attention_distance": ("Mean attention distance (paper Figure 7, right)", "Per head and layer, the image-space "
                           "distance (pixels) across which attention is spread, averaged over queries and images."),
}


def build_inspection_page(root: Path) -> Page:
    summary = _json(root / "summary.json") if (root / "summary.json").is_file() else {}
    model = summary.get("model", "the model")
    page = Page("inspection", f"Inspection {root.name}",
                f"What does {model} attend to, and what did its embeddings learn (the paper's Section 4.5)?",
                str(root), configs=_configs(root, "inspect.json"))
    if summary:
        page.headline = key_value_table(summary, caption="summary.json")
    else:
        page.missing_headline = "summary.json is written by vitlab inspect."
    for name, (title, caption) in INSPECTION_FIGURES.items():
        if (root / f"{name}.png").is_file():
            page.figures.append(embed_figure(root / f"{name}.png", title, caption, root))
    source = summary.get("run_dir")
    if source and Path(source).is_dir():
        page.links.append({"label": f"inspected run {Path(source).name}",
                           "href": os.path.relpath(Path(source) / "report.html", root), "note": ""})
    for name in ("inspect.json", "summary.json"):
        page.links.append({"label": name, "href": name, "note": ""})
    return page


# ---- the demo ----------------------------------------------------------------------------------------------
DEMO_QUESTION = ("Does pre-training help a ViT on a small data set? The paper's Table 2 says pre-trained ViTs "
                 "transfer well; here a small ViT pre-trained on Fashion-MNIST is fine-tuned on digits, compared "
                 "with the same ViT trained from scratch and with a few-shot linear probe.")
FEWSHOT_CAPTION = ("Closed-form ridge on the frozen pre-logits; mean ± std over seeds; random initialisation as the "
                   "control.")
DEMO_STAGES = (("pretrain", "Pre-training on Fashion-MNIST"), ("finetune", "Fine-tuning on digits"),
               ("scratch", "From scratch on digits"))


def demo_table(summary: dict[str, Any]) -> Table:
    """The Table-2-style table from the demo's ``summary.json`` rows (one column per way of transferring)."""
    rows = summary.get("rows") or []
    unit = summary.get("unit", "core-min")
    pre_acc = (summary.get("metrics") or {}).get("pretrain_test_accuracy")

    def percent(value: Any, spread: Any, key: str) -> Cell:
        if value is None:
            return Cell("-")
        text = f"{100 * value:.2f}" + (f" ± {100 * spread:.2f}" if spread is not None else "")
        return number_cell(value, key, text)

    body = [
        [Cell("Digits, 32 px (test top-1 %)")] + [percent(r["accuracy"], r.get("spread"), f"table.{i}.accuracy")
                                                 for i, r in enumerate(rows)],
        [Cell("Fashion-MNIST, 28 px (pre-training test top-1 %)")]
        + [percent(pre_acc, None, f"table.{i}.pretrain_accuracy") if r.get("pretrain_minutes") is not None
           else Cell("-") for i, r in enumerate(rows)],
        [Cell(f"Pre-training compute ({unit})")]
        + [number_cell(r.get("pretrain_minutes"), f"table.{i}.pretrain_minutes",
                       None if r.get("pretrain_minutes") is None else f"{r['pretrain_minutes']:.1f}")
           for i, r in enumerate(rows)],
        [Cell(f"Transfer compute ({unit})")]
        + [number_cell(r.get("transfer_minutes"), f"table.{i}.transfer_minutes", f"{r.get('transfer_minutes', 0):.1f}")
           for i, r in enumerate(rows)],
    ]
    return Table([""] + [r["label"] for r in rows], body, "In the layout of the paper's Table 2", id="table2")


def fewshot_points(root: Path) -> list[dict[str, Any]]:
    """``{model, x=shots, mean, std}`` points from the demo's ``fewshot-*.json`` files (accuracy in %)."""
    points = []
    for name, label in (("fewshot-pretrained.json", "pre-trained"), ("fewshot-random-init.json", "random init")):
        if (root / name).is_file():
            for result in _json(root / name)["report"]["results"]:
                points.append({"model": label, "x": result["shots"], "mean": 100 * result["mean"],
                               "std": 100 * result["std"]})
    return points


def build_demo_page(root: Path) -> Page:
    summary = _json(root / "summary.json") if (root / "summary.json").is_file() else {}
    page = Page("demo", "vitlab demo: pre-train on Fashion-MNIST, transfer to digits", DEMO_QUESTION, str(root),
                configs=_configs(root, "demo.json"))
    if summary:
        page.headline = key_value_table(summary, caption="summary.json", skip=("rows", "verdict"))
        page.lead_tables.append(demo_table(summary))
        if summary.get("verdict"):
            page.notes.append(summary["verdict"])
            page.verdict_first = True
    else:
        page.missing_headline = "summary.json is written when every stage of the demo has finished."
    for stage, label in DEMO_STAGES:
        stage_dir = root / stage
        if stage_dir.is_dir():
            page.links.append({"label": label, "href": _stage_report(stage_dir, root), "note": f"{stage}/"})
            curves = stage_dir / FIGURES / "training_curves.png"
            if curves.is_file():
                page.figures.append(embed_figure(curves, f"{label}: training curves",
                                                 f"From {stage}/metrics.jsonl.", root))
            else:
                for trial in sorted((stage_dir / "sweep").glob("*/" + FIGURES + "/training_curves.png")):
                    run = trial.parent.parent
                    page.figures.append(embed_figure(trial, f"{label}, {run.name}: training curves",
                                                     f"From {stage}/sweep/{run.name}/metrics.jsonl.", root))
    points = fewshot_points(root)
    fewshot_png = root / FIGURES / "fewshot.png"
    if points and _up_to_date(fewshot_png, root / "fewshot-pretrained.json", root / "fewshot-random-init.json"):
        page.figures.append(embed_figure(fewshot_png, "Few-shot linear accuracy on digits", FEWSHOT_CAPTION, root))
    elif points:
        png = plot_study(points, "Training images per class (shots)", "Digits test accuracy (%)",
                         root / FIGURES / "fewshot", log_x=True, title="Few-shot linear evaluation")
        page.figures.append(embed_figure(png, "Few-shot linear accuracy on digits", FEWSHOT_CAPTION, root))
    for name in ("fewshot-pretrained.json", "fewshot-random-init.json", "demo-report.md", "summary.json"):
        if (root / name).is_file():
            page.links.append({"label": name, "href": name, "note": ""})
    return page


BUILDERS: dict[str, Callable[[Path], Page]] = {
    "run": build_run_page,
    "study": build_study_page,
    "inspection": build_inspection_page,
    "demo": build_demo_page,
}
