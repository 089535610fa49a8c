"""`vitlab models`: the table of named variants (layers, width, MLP, heads, parameters, GMACs).

Counts come from formulas over the config (:func:`vitlab.models.counts.analytic_counts`), so the table prints
at once: nothing is built or traced, and torch is not even imported. The pattern is a glob over canonical names
or one of the paper's spellings (``'ViT-B/16'``, ``R50+ViT-L/32``, ``BiT-R152x4``).
"""
from __future__ import annotations

import argparse
import fnmatch

from vitlab.errors import ConfigError
from vitlab.models.counts import analytic_counts, hybrid_stride
from vitlab.models.names import canonical_name, list_models, model_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*",
                        help="glob over names, e.g. 'vit_b*', or a paper name such as 'ViT-B/16' (default: all)")
    parser.add_argument("--img-size", type=int, default=224, help="input resolution for parameters and GMACs")
    parser.add_argument("--num-classes", type=int, default=1000)


def matches(name: str, pattern: str) -> bool:
    """Glob over canonical names, case-insensitive, with the paper's spellings mapped (``ViT-L/16`` -> vit_l16)."""
    return any(fnmatch.fnmatchcase(name, candidate)
               for candidate in {pattern.strip().lower(), canonical_name(pattern)})


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        if not matches(name, args.pattern):
            continue
        family, fields = model_spec(name)
        patch = fields.get("patch_size", 1) * hybrid_stride(fields.get("hybrid_layers"))
        if family == "vit" and args.img_size % patch:
            continue  # this patch size does not tile the requested resolution
        params, macs = analytic_counts(name, img_size=args.img_size, num_classes=args.num_classes)
        rows.append((name, family, fields, params, macs / 1e9))
    if not rows:
        raise ConfigError(f"no model matches {args.pattern!r} at img_size {args.img_size}; "
                          "see `vitlab models` for the names (globs such as 'vit_b*' work)")
    header = f"{'name':<14} {'layers':>6} {'width':>6} {'mlp':>6} {'heads':>5} {'params (M)':>11} {'GMACs':>8}"
    print(f"img_size {args.img_size}, {args.num_classes} classes")
    print(header)
    print("-" * len(header))
    for name, family, fields, params, gmacs in rows:
        if family == "vit":
            shape = f"{fields['depth']:>6} {fields['width']:>6} {fields['mlp_dim']:>6} {fields['num_heads']:>5}"
        else:
            shape = f"{sum(fields['layers']) * 3 + 2:>6} {'x' + str(fields['width_factor']):>6} {'-':>6} {'-':>5}"
        print(f"{name:<14} {shape} {params / 1e6:>11.2f} {gmacs:>8.2f}")
    return 0
