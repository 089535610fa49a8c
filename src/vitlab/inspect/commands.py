"""`vitlab inspect`: attention rollout, mean attention distance, position-embedding similarity, embedding filters.

Writes ``attention_rollout.png``, ``attention_distance.png``, ``position_similarity.png``, ``embedding_filters.png``
and ``inspect.json`` (mean attention distance per layer and head, explained variance of the filter components).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vitlab.data import build_stream, get_source
from vitlab.errors import ConfigError
from vitlab.inspect.attention import mean_attention_distance, rollout_heatmap
from vitlab.inspect.embeddings import embedding_filters, position_similarity
from vitlab.inspect.figures import distance_figure, filters_figure, heatmap_overlay, similarity_figure, tile
from vitlab.models.registry import create_model
from vitlab.weights import resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="weights: .safetensors, run directory, official .npz, timm:NAME or hf:NAME")
    parser.add_argument("--model", help="model name (random weights) when no checkpoint is given")
    parser.add_argument("--dataset", default="fashion_mnist", help="source of the images to inspect")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--distance-images", type=int, default=128, help="images averaged for attention distance (paper: 128)")
    parser.add_argument("--out", required=True, help="output directory")


def load_subject(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        return resolve(args.checkpoint).build().eval()
    if args.model:
        return create_model(args.model).eval()
    raise ConfigError("vitlab inspect needs --checkpoint PATH or --model NAME")


def run(args: argparse.Namespace) -> int:
    model = load_subject(args)
    if getattr(model, "family", "") != "vit" or model.config.is_hybrid:
        raise ConfigError("vitlab inspect works on plain ViT models (attention maps, patch filters)")
    cfg = model.config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = get_source(args.dataset, split=args.split)
    count = max(args.num_images, args.distance_images)
    stream = build_stream(source, batch_size=min(count, 64), train=False, img_size=cfg.img_size,
                          in_chans=cfg.in_chans, indices=range(min(count, len(source))))
    batches = [images for images, _ in stream]
    images = torch.cat(batches)
    with torch.no_grad():
        heat = rollout_heatmap(model, images[: args.num_images])
        maps = []
        for start in range(0, len(images), 32):
            chunk = model.get_attention_maps(images[start : start + 32])
            maps = chunk if not maps else [torch.cat([a, b]) for a, b in zip(maps, chunk)]
    patch = cfg.patch_size
    distances = mean_attention_distance(maps, cfg.grid_size, patch, model.num_prefix_tokens)
    raw = [source[i][0] for i in range(args.num_images)]
    tile([heatmap_overlay(image, h) for image, h in zip(raw, heat)], columns=2).save(out / "attention_rollout.png")
    max_pixels = ((cfg.img_size[0] ** 2 + cfg.img_size[1] ** 2) ** 0.5)
    distance_figure(distances, max_pixels).save(out / "attention_distance.png")
    report = {"mean_attention_distance_px": distances.tolist(), "images_for_distance": len(images)}
    if cfg.posemb in ("learned", "learned_2d", "sincos_2d"):
        similarity_figure(position_similarity(model)).save(out / "position_similarity.png")
    filters, explained = embedding_filters(model)
    filters_figure(filters).save(out / "embedding_filters.png")
    report["filter_pca_explained_variance"] = explained.tolist()
    (out / "inspect.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
    return 0
