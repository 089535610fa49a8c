"""A study's results: ``study.json`` (every point and claim), ``study.csv`` (one row per point), ``study.md``
(the per-variant table with mean ± spread over seeds, then the claims with the paper's figure and the verdict) and
the figure (``study.png`` + ``.svg``) and ``report.html`` drawn by :mod:`vitlab.report`."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

from vitlab.models.weights import atomic_write
from vitlab.report import build_report
from vitlab.studies import report
from vitlab.studies.claims import Claim, mean_spread, study_claims

TITLES = {
    "data_size": "Data-size study (paper Figures 3-4)",
    "scaling": "Scaling study (paper Figure 5)",
    "posemb": "Position embeddings (paper Table 8)",
    "head": "Class token vs global average pooling (paper Figure 9)",
    "selfsup": "Self-supervision by masked patch prediction (paper Section 4.6)",
    "learned": "What the model learned (paper Figure 7)",
}


def write_results(study, points: list, out: Path) -> list[Claim]:
    """Write every result file of ``study`` into ``out``; returns the claims."""
    claims = study_claims(study, points)
    _write_text(out / "study.json", json.dumps({
        "study": study.to_dict(),
        "points": [dataclasses.asdict(p) for p in points],
        "claims": [dataclasses.asdict(c) | {"mean": c.mean, "spread": c.spread} for c in claims],
    }, indent=2))
    _write_text(out / "study.csv", points_csv(points))
    _write_text(out / "study.md", markdown(study, points, claims))
    if study.kind in ("data_size", "scaling"):
        report.plot(study, mean_points(points), out / "study")  # study.png + study.svg
    build_report(out)  # report.html
    return claims


def metric_names(points: list) -> list[str]:
    return sorted({k for p in points for k in p.metrics})


def points_csv(points: list) -> str:
    names = metric_names(points)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "family", "value", "seed", "size", "steps", "images_seen", "pretrain_gflops",
                     "wall_seconds", *names])
    for p in points:
        writer.writerow([p.label, p.family, p.value, p.seed, p.size, p.steps, p.images_seen, p.pretrain_gflops,
                         p.wall_seconds, *[p.metrics.get(k) for k in names]])
    return buffer.getvalue()


def variant_table(points: list) -> str:
    """One row per (variant, grid value): mean ± spread over seeds of every metric (accuracies in %)."""
    names = metric_names(points)
    head = ["model", "grid", "seeds", "steps", "GFLOPs", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, Any], list] = {}
    for p in points:
        groups.setdefault((p.label, p.value), []).append(p)
    for (label, value), members in groups.items():
        cells = [label, "-" if value is None else f"{value:g}", str(len(members)), str(members[0].steps),
                 f"{members[0].pretrain_gflops:.3g}"]
        for name in names:
            values = [p.metrics[name] for p in members if p.metrics.get(name) is not None]
            if not values:
                cells.append("-")
                continue
            mean, spread = mean_spread(values)
            scale = 100 if _is_accuracy(name) else 1
            cells.append(f"{scale * mean:.3g} ± {scale * spread:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_table(claims: list[Claim]) -> str:
    lines = ["| claim | paper | ours | statistic (mean ± spread) | seeds | verdict |", "|---|---|---|---|---|---|"]
    for c in claims:
        stat = f"{c.statistic}: {c.mean:+.4g} ± {c.spread:.2g}" if c.values else c.statistic
        lines.append(f"| {c.claim} | {c.paper} | {c.ours} | {stat} | {c.seeds} | {c.verdict} |")
    return "\n".join(lines)


def markdown(study, points: list, claims: list[Claim]) -> str:
    wall = sum(p.wall_seconds for p in points)
    return (f"# {TITLES.get(study.kind, study.kind)}\n\n{study.title}\n\n"
            f"Base preset `{study.base}`, training seeds {study.seeds}, claims read `{study.metric}`; "
            f"few-shot on {study.evaluation.dataset}; {len(points)} runs, {wall / 60:.1f} min of training and "
            "evaluation.\n\n"
            f"## Numbers (mean ± sample std over seeds; accuracies in %)\n\n{variant_table(points)}\n\n"
            f"## Claims\n\n{claims_table(claims)}\n\n"
            "A verdict reads a per-seed statistic that is positive when the claim holds: `holds` / `does not hold` "
            "when its mean is further from zero than its spread, `inconclusive` otherwise (see "
            "`vitlab.studies.claims`).\n")


def mean_points(points: list) -> list:
    """One point per (variant, grid value) with the metrics averaged over seeds (what the figure draws)."""
    groups: dict[tuple[str, Any], list] = {}
    for p in points:
        groups.setdefault((p.label, p.value), []).append(p)
    merged = []
    for members in groups.values():
        first = members[0]
        keys = {k for p in members for k in p.fewshot}
        spreads = {k: mean_spread([p.fewshot[k] for p in members if k in p.fewshot]) for k in keys}
        merged.append(dataclasses.replace(first, fewshot={k: m for k, (m, _) in spreads.items()},
                                          fewshot_std={k: s for k, (_, s) in spreads.items()}))
    return merged


def _is_accuracy(name: str) -> bool:
    return name.endswith("-shot") or name in ("finetune", "pretrain")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
