"""`vitlab models`: the table of named variants (layers, width, MLP, heads, parameters, GMACs)."""
from __future__ import annotations

import argparse
import fnmatch

from vitlab.models.flops import count_macs
from vitlab.models.registry import list_models, model_spec
from vitlab.models.vit import hybrid_stride


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over names, e.g. 'vit_b*' (default: all)")
    parser.add_argument("--img-size", type=int, default=224, help="input resolution for parameters and GMACs")
    parser.add_argument("--num-classes", type=int, default=1000)


def run(args: argparse.Namespace) -> int:
    from vitlab.models.flops import count_params

    rows = []
    for name in list_models():
        if not fnmatch.fnmatch(name, args.pattern):
            continue
        family, fields = model_spec(name)
        patch = fields.get("patch_size", 1) * hybrid_stride(fields.get("hybrid_layers"))
        if family == "vit" and args.img_size % patch:
            continue  # this patch size does not tile the requested resolution
        try:
            params = count_params(name, img_size=args.img_size, num_classes=args.num_classes)
            gmacs = count_macs(name, img_size=args.img_size, num_classes=args.num_classes) / 1e9
        except ModuleNotFoundError:
            continue  # family not installed in this build
        rows.append((name, family, fields, params, gmacs))
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
