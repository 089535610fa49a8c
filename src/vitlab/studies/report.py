"""A study's results as ``study.md`` (table), ``study.csv``, ``study.json``, ``study.png`` + ``study.svg`` (one curve
per model, drawn by :func:`vitlab.report.plot_study`) and ``report.html``.

The plot mirrors the paper's figures: x = pre-training set size (Figure 4, log scale) or pre-training compute
(Figure 5, log scale), y = few-shot accuracy of the frozen representation.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from vitlab.report import build_report, plot_study


def x_value(study, point) -> float:
    return point.size if study.kind == "data_size" else point.pretrain_gflops


def markdown_table(study, points) -> str:
    shot_keys = sorted({k for p in points for k in p.fewshot}, key=lambda k: int(k.split("-")[0]))
    head = ["model", "pre-training images", "steps", "pre-training GFLOPs", "pre-train test acc %"]
    head += [f"{k} {study.evaluation.dataset} %" for k in shot_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        acc = "-" if p.pretrain_accuracy is None else f"{100 * p.pretrain_accuracy:.2f}"
        cells = [p.label, str(p.size), str(p.steps), f"{p.pretrain_gflops:.3g}", acc]
        cells += [f"{100 * p.fewshot[k]:.2f}" if k in p.fewshot else "-" for k in shot_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def axis_labels(study) -> tuple[str, str]:
    """The paper's axis names (Figure 4: pre-training samples; Figure 5: total pre-training compute)."""
    key = f"{study.evaluation.shots[0]}-shot"
    x_label = ("Number of pre-training samples" if study.kind == "data_size"
               else "Total pre-training compute [GFLOPs]")
    return x_label, f"Linear {key} {study.evaluation.dataset} Top1 [%]"


def figure_points(study, points) -> list[dict]:
    """``{model, x, mean, std}`` rows for :func:`vitlab.report.plot_study` (accuracy in %; std when the point has
    a spread over seeds, as ``fewshot_std``)."""
    key = f"{study.evaluation.shots[0]}-shot"
    rows = []
    for p in points:
        if key in p.fewshot and x_value(study, p) > 0:
            spread = (getattr(p, "fewshot_std", None) or {}).get(key)
            rows.append({"model": p.label, "x": x_value(study, p), "mean": 100 * p.fewshot[key],
                         "std": None if spread is None else 100 * spread})
    return rows


def plot(study, points, out_stem: Path) -> Path | None:
    """``study.png`` + ``study.svg``: one line per model against a log x axis, as in the paper's Figures 4-5."""
    rows = figure_points(study, points)
    if not rows:
        return None
    title = "Data-size study (paper Figure 4)" if study.kind == "data_size" else "Scaling study (paper Figure 5)"
    return plot_study(rows, *axis_labels(study), out_stem, log_x=True, title=title)


def write_report(study, points, out: Path) -> None:
    title = "Data-size study (paper Figure 4)" if study.kind == "data_size" else "Scaling study (paper Figure 5)"
    table = markdown_table(study, points)
    (out / "study.md").write_text(f"# {title}\n\nBase preset `{study.base}`; evaluation: "
                                  f"{', '.join(map(str, study.evaluation.shots))}-shot linear on "
                                  f"{study.evaluation.dataset} ({study.evaluation.representation}).\n\n{table}\n")
    (out / "study.json").write_text(json.dumps([dataclasses.asdict(p) for p in points], indent=2))
    with open(out / "study.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "size", "steps", "images_seen", "pretrain_gflops", "pretrain_accuracy",
                         *sorted({k for p in points for k in p.fewshot})])
        keys = sorted({k for p in points for k in p.fewshot})
        for p in points:
            writer.writerow([p.label, p.size, p.steps, p.images_seen, p.pretrain_gflops, p.pretrain_accuracy,
                             *[p.fewshot.get(k) for k in keys]])
    plot(study, points, out / "study")
    build_report(out)
