"""A study's results as ``study.md`` (table), ``study.csv``, ``study.json`` and ``study.png`` (one curve per model).

The plot mirrors the paper's figures: x = pre-training set size (Figure 4, log scale) or pre-training compute
(Figure 5, log scale), y = few-shot accuracy of the frozen representation.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from vitlab.inspect.figures import colorize


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


def plot(study, points, path: Path, size: tuple[int, int] = (560, 360)) -> None:
    key = f"{study.evaluation.shots[0]}-shot"
    series: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if key in p.fewshot and x_value(study, p) > 0:
            series.setdefault(p.label, []).append((math.log10(x_value(study, p)), 100 * p.fewshot[key]))
    width, height = size
    margin = 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line([(margin, 10), (margin, height - margin), (width - 10, height - margin)], fill="black")
    xlabel = "pre-training images (log10)" if study.kind == "data_size" else "pre-training GFLOPs (log10)"
    draw.text((margin, height - margin + 22), xlabel, fill="black")
    draw.text((4, 2), f"{key} {study.evaluation.dataset} accuracy %", fill="black")
    values = [v for s in series.values() for v in s]
    if values:
        x0, x1 = min(v[0] for v in values), max(v[0] for v in values)
        y0, y1 = min(v[1] for v in values), max(v[1] for v in values)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

        def at(x: float, y: float) -> tuple[float, float]:
            return (margin + (x - x0) / (x1 - x0) * (width - margin - 30),
                    height - margin - (y - y0) / (y1 - y0) * (height - margin - 30))

        draw.text((margin - 45, 12), f"{y1:.1f}", fill="black")
        draw.text((margin - 45, height - margin - 10), f"{y0:.1f}", fill="black")
        draw.text((margin, height - margin + 6), f"{x0:.2f}", fill="black")
        draw.text((width - 50, height - margin + 6), f"{x1:.2f}", fill="black")
        for index, (label, pts) in enumerate(series.items()):
            colour = tuple(int(c) for c in colorize(index / max(len(series) - 1, 1) * 0.85))
            pts = sorted(pts)
            draw.line([at(*p) for p in pts], fill=colour, width=2) if len(pts) > 1 else None
            for p in pts:
                cx, cy = at(*p)
                draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour)
            draw.text((width - 140, 14 + 14 * index), label, fill=colour)
    image.save(path)


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
    plot(study, points, out / "study.png")
