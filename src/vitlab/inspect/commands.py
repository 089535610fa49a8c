"""`vitlab inspect`: attention rollout, mean attention distance, position-embedding similarity, embedding filters.

Works on plain ViTs and hybrids (for a hybrid, the Transformer's attention over the ResNet feature-map grid, as the
paper's Figure 11 shows, and the ResNet root's filters). ``--checkpoint`` takes any weights reference, read through
:func:`vitlab.weights.resolve` like every other command: a run directory, a vitlab ``.safetensors``, an official
``.npz``, ``timm:NAME`` or ``hf:NAME``. ``--model NAME`` inspects random weights at the
data source's own resolution (rounded up to the token stride), not at the model's 224-px default.

Writes ``attention_rollout``, ``attention_distance``, ``position_similarity`` (models with position embeddings)
and ``embedding_filters``, each as ``.png`` and ``.svg``; ``inspect.json`` (settings, mean attention distance per
layer and head, explained variance of the filter components), ``summary.json`` (the headline numbers) and
``report.html``. Attention is reduced batch by batch (see :func:`vitlab.inspect.attention.summarise_attention`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from vitlab.config import parse_overrides
from vitlab.data import build_stream, get_source
from vitlab.errors import ConfigError
from vitlab.inspect.attention import attention_batch_size, summarise_attention, token_pixels
from vitlab.inspect.embeddings import embedding_filters, position_similarity
from vitlab.models.layers import hybrid_stride
from vitlab.models.registry import create_model, model_spec
from vitlab.report import build_report, log_figures
from vitlab.report.inspection import distance_figure, filters_figure, rollout_figure, similarity_figure
from vitlab.weights import WeightsRef, resolve

FIGURE_NAMES = ("attention_rollout", "attention_distance", "position_similarity", "embedding_filters")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="weights: .safetensors, run directory, official .npz, timm:NAME or hf:NAME")
    parser.add_argument("--model", help="model name (random weights) when no checkpoint is given")
    parser.add_argument("--dataset", default=None,
                        help="source of the images (default: a run directory's own data set, else fashion_mnist)")
    parser.add_argument("--option", "-o", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a data source option, e.g. -o root=/data/pets (repeatable)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--img-size", type=int, default=None,
                        help="resolution (default: the checkpoint's; with --model, the source's own size)")
    parser.add_argument("--num-images", type=int, default=8, help="images shown with their attention rollout")
    parser.add_argument("--distance-images", type=int, default=128, help="images averaged for attention distance (paper: 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights with --model")
    parser.add_argument("--out", required=True, help="output directory")


def load_subject(args: argparse.Namespace, weights: WeightsRef | None, source: Any) -> torch.nn.Module:
    """The model to inspect: the resolved checkpoint (at ``--img-size`` if given), or random weights of ``--model``
    at the source's own size rounded up to the token stride."""
    if weights is not None:
        return weights.build(img_size=args.img_size).eval()
    if args.model:
        image = source[0][0]  # uint8 [C, H, W] at the source's own size
        family, fields = model_spec(args.model)
        if family != "vit":
            raise ConfigError(f"--model {args.model}: vitlab inspect draws ViTs and hybrids (attention maps), "
                              f"not {family} models")
        stride = int(fields["patch_size"]) * hybrid_stride(fields.get("hybrid_layers"))
        size = args.img_size or int(math.ceil(max(image.shape[1:]) / stride) * stride)
        torch.manual_seed(args.seed)
        model = create_model(args.model, num_classes=len(source.classes), in_chans=int(image.shape[0]), img_size=size)
        return model.eval()
    raise ConfigError("vitlab inspect needs --checkpoint REF (run directory, .safetensors, .npz, timm:NAME, hf:NAME) "
                      "or --model NAME")


def run_dir_of(path: Path) -> Path | None:
    """The run directory a checkpoint reference belongs to: the directory itself, or RUN for
    ``RUN/checkpoints/NAME.safetensors``; None for a file elsewhere."""
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent
    return None


def data_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The source to draw images from: ``--dataset`` and ``-o``, else the inspected run's own data set."""
    options = dict(parse_overrides(args.options))
    if args.dataset:
        return args.dataset, options
    run_dir = run_dir_of(Path(args.checkpoint)) if args.checkpoint else None
    saved = run_dir / "config.yaml" if run_dir else None
    if saved is not None and saved.is_file():
        data = (yaml.safe_load(saved.read_text()) or {}).get("data") or {}
        if data.get("dataset"):
            return str(data["dataset"]), {**(data.get("options") or {}), **options}
    return "fashion_mnist", options


def _check_args(args: argparse.Namespace) -> None:
    for name in ("num_images", "distance_images"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)}: expected a positive integer")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    weights = resolve(args.checkpoint) if args.checkpoint else None  # a bad reference fails before any data loads
    run_dir = run_dir_of(Path(args.checkpoint)) if args.checkpoint else None
    args.dataset, options = data_of(args)
    source = get_source(args.dataset, split=args.split, **options)
    model = load_subject(args, weights, source)
    if getattr(model, "family", "") != "vit":
        raise ConfigError(f"vitlab inspect draws ViTs and hybrids (attention maps); this model is a "
                          f"{getattr(model, 'family', type(model).__name__)}")
    cfg = model.config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    count = min(max(args.num_images, args.distance_images), len(source))
    batch = attention_batch_size(model)
    stream = build_stream(source, batch_size=batch, train=False, img_size=cfg.img_size, in_chans=cfg.in_chans,
                          indices=range(count), prefetch=0)
    summary = summarise_attention(model, (images for images, _ in stream), num_rollout=min(args.num_images, count))
    pixels = token_pixels(model)
    kind = "hybrid" if cfg.is_hybrid else "ViT"
    figures = {}
    raw = [source[i][0].numpy() for i in range(len(summary.rollout))]
    figures["attention_rollout"] = rollout_figure(raw, list(summary.rollout.numpy()), out / "attention_rollout")
    max_pixels = math.hypot(*cfg.img_size)
    figures["attention_distance"] = distance_figure(summary.distances.numpy(), out / "attention_distance",
                                                    max_pixels=max_pixels)
    if cfg.posemb in ("learned", "learned_2d", "sincos_2d"):
        figures["position_similarity"] = similarity_figure(position_similarity(model).numpy(), out / "position_similarity")
    filters, explained = embedding_filters(model)
    figures["embedding_filters"] = filters_figure(
        filters.numpy(), out / "embedding_filters", explained.tolist(),
        title=("ResNet root filters" if cfg.is_hybrid else "RGB embedding filters" if cfg.in_chans == 3
               else "Embedding filters") + " (first principal components)")
    settings = {"checkpoint": args.checkpoint, "model": args.model, "dataset": args.dataset, "split": args.split,
                "img_size": list(cfg.img_size), "grid": list(cfg.grid_size), "pixels_per_token": pixels,
                "family": kind, "images_for_rollout": len(summary.rollout), "batch_size": batch}
    details = {"settings": settings, "mean_attention_distance_px": summary.distances.tolist(),
               "images_for_distance": summary.images, "filter_pca_explained_variance": explained.tolist()}
    per_layer = summary.distances.mean(dim=1)
    headline = {
        "task": "inspect",
        "model": _model_name(args, model),
        "family": kind,
        "dataset": f"{args.dataset}/{args.split}",
        "img_size": int(cfg.img_size[0]),
        "grid": f"{cfg.grid_size[0]}x{cfg.grid_size[1]}",
        "images_for_distance": summary.images,
        "run_dir": str(run_dir.resolve()) if run_dir else None,
        "metrics": {
            "mean_attention_distance_first_layer_px": float(per_layer[0]),
            "mean_attention_distance_last_layer_px": float(per_layer[-1]),
            "filter_pc1_explained_variance": float(explained[0]),
        },
    }
    _write_json(out / "inspect.json", details)
    _write_json(out / "summary.json", headline)
    if run_dir is not None:
        log_figures(run_dir / "tensorboard", {f"inspect_{name}": path for name, path in figures.items()})
    report = build_report(out)
    print(f"wrote {', '.join(sorted(figures))} (.png, .svg), inspect.json, summary.json and {report.name} to {out}")
    return 0


def _model_name(args: argparse.Namespace, model: torch.nn.Module) -> str:
    if args.model:
        return args.model
    cfg = model.config
    return f"{'hybrid ' if cfg.is_hybrid else ''}ViT width {cfg.width}, depth {cfg.depth}, patch {cfg.patch_size}"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
