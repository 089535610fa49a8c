"""The paper's claims, each checked by one function of a study's numbers.

Every claim is reduced to one statistic per training seed that is positive when the claim holds (e.g. "ResNet
5-shot minus ViT 5-shot at the smallest subset"); closeness claims use ``tolerance - |difference|``. The verdict
reads the statistic's mean and spread (sample standard deviation over seeds):

* ``holds`` when the mean is positive and the spread does not reach zero,
* ``does not hold`` when it is negative (or zero with no spread) and the spread does not reach zero,
* ``inconclusive: the spread covers the difference`` when ``|mean| <= spread``,
* ``inconclusive: one seed, no spread`` with a single seed (the quick sizes): the means alone cannot tell a
  difference from seed noise; ``direction`` still says which way the means point.

Seeds are paired: the statistic of seed ``s`` reads every variant's run with training seed ``s`` (same subset,
same initialisation stream), which cancels part of the seed noise.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

HOLDS, FAILS = "holds", "does not hold"
SPREAD_COVERS = "inconclusive: the spread covers the difference"
ONE_SEED = "inconclusive: one seed, no spread"


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(values: Sequence[float]) -> str:
    """The verdict of a claim whose per-seed statistic is ``values`` (positive: the claim holds)."""
    if not values or any(math.isnan(v) for v in values):
        return "inconclusive: no numbers"
    mean, spread = mean_spread(values)
    if len(values) < 2:
        return ONE_SEED
    if spread > 0 and abs(mean) <= spread:
        return SPREAD_COVERS
    return HOLDS if mean > 0 else FAILS


def direction(values: Sequence[float]) -> str:
    """Which way the mean points, whatever the spread."""
    return HOLDS if values and statistics.fmean(values) > 0 else FAILS


@dataclass
class Claim:
    """One line of the findings table."""

    key: str
    claim: str  # the paper's claim in words
    paper: str  # the paper's figure for it
    statistic: str  # what the per-seed statistic is
    values: list[float]  # the statistic per seed
    ours: str  # the numbers behind it, mean ± spread
    verdict: str = ""
    direction: str = ""
    seeds: int = 0

    def __post_init__(self) -> None:
        self.verdict = verdict(self.values)
        self.direction = direction(self.values)
        self.seeds = len(self.values)

    @property
    def mean(self) -> float:
        return mean_spread(self.values)[0]

    @property
    def spread(self) -> float:
        return mean_spread(self.values)[1]


@dataclass
class Table:
    """Per-seed numbers of one study: ``values[(label, grid value)][seed] = number`` for one metric."""

    values: dict[tuple[str, Any], dict[int, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, points: Iterable[Any], metric: str) -> "Table":
        table = cls()
        for p in points:
            number = p.metrics.get(metric)
            if number is not None:
                table.values.setdefault((p.label, p.value), {})[p.seed] = float(number)
        return table

    def seeds(self, keys: Iterable[tuple[str, Any]]) -> list[int]:
        """Seeds present for every key (the paired seeds)."""
        sets = [set(self.values.get(k, {})) for k in keys]
        return sorted(set.intersection(*sets)) if sets else []

    def per_seed(self, keys: Sequence[tuple[str, Any]], statistic: Callable[..., float]) -> list[float]:
        return [statistic(*(self.values[k][s] for k in keys)) for s in self.seeds(keys)]

    def versus(self, key: str, text: str, paper: str, winner: tuple[str, Any], loser: tuple[str, Any],
               metric: str) -> "Claim":
        """The claim that ``winner`` scores above ``loser``: their difference per seed, both scores shown."""
        return Claim(key, text, paper, f"{winner[0]} - {loser[0]} {metric} at n={winner[1]}",
                     self.per_seed([winner, loser], lambda w, l: w - l),
                     f"{winner[0]} {self.summary(winner)} vs {loser[0]} {self.summary(loser)} %")

    def summary(self, key: tuple[str, Any]) -> str:
        values = list(self.values.get(key, {}).values())
        if not values:
            return "-"
        mean, spread = mean_spread(values)
        return f"{100 * mean:.2f} ± {100 * spread:.2f}"


def pct(values: Sequence[float]) -> str:
    mean, spread = mean_spread(values) if values else (math.nan, math.nan)
    return f"{100 * mean:+.2f} ± {100 * spread:.2f} pt"


# -- one function per study --------------------------------------------------------------------------------------
def data_size_claims(study, points) -> list[Claim]:
    """Figures 3-4: ResNets win on small pre-training sets; ViT overtakes them as the data grows."""
    table = Table.of(points, study.metric)
    vit, resnet = _family_label(study, "vit"), _family_label(study, "bit")
    small, large = min(study.sizes), max(study.sizes)
    claims = []
    claims.append(table.versus("data-size-small", "ResNet (BiT) beats ViT on the smallest pre-training set",
                               "Fig. 3-4: BiT above ViT-B at 9M JFT / ImageNet", (resnet, small), (vit, small),
                               study.metric))
    keys = [(vit, large), (resnet, large), (vit, small), (resnet, small)]
    trend = table.per_seed(keys, lambda vl, rl, vs, rs: (vl - rl) - (vs - rs))
    claims.append(Claim(
        "data-size-trend", "ViT gains on ResNet as the pre-training set grows",
        "Fig. 4: ViT-B/32 below R50 at 9M, above from 90M", f"(ViT - ResNet) at n={large} minus at n={small}",
        trend, pct(trend)))
    claims.append(table.versus("data-size-large", "ViT beats ResNet on the largest pre-training set",
                               "Fig. 3: ViT-L/16 above BiT on JFT-300M", (vit, large), (resnet, large), study.metric))
    return claims


def scaling_claims(study, points) -> list[Claim]:
    """Figure 5: ViT dominates ResNets on accuracy per compute; hybrids beat ViT at small compute, the gap closes.

    Each family's points (all its sizes and budgets) of one seed are fitted by a line in log10(GFLOPs); the lines
    are compared at the ends of the compute range every family covers.
    """
    families = {v.family.lower(): v.family for v in study.models.values()}
    vit, bit = families.get("vit"), families.get("bit")
    hybrid = families.get("hybrid")
    seeds = sorted({p.seed for p in points})
    fits: dict[int, dict[str, tuple[float, float]]] = {}
    spans: dict[str, list[float]] = {}
    for seed in seeds:
        for family in families.values():
            xs = [math.log10(p.pretrain_gflops) for p in points if p.seed == seed and p.family == family
                  and p.pretrain_gflops > 0 and p.metrics.get(study.metric) is not None]
            ys = [p.metrics[study.metric] for p in points if p.seed == seed and p.family == family
                  and p.pretrain_gflops > 0 and p.metrics.get(study.metric) is not None]
            if len(set(xs)) >= 2:
                fits.setdefault(seed, {})[family] = _line(xs, ys)
                spans.setdefault(family, []).extend(xs)
    low = max((min(v) for v in spans.values()), default=math.nan)
    high = min((max(v) for v in spans.values()), default=math.nan)
    if not low <= high:  # the families' compute ranges do not overlap: compare in the middle of the union
        low = high = statistics.fmean([x for v in spans.values() for x in v]) if spans else math.nan

    def at(seed: int, family: Optional[str], x: float) -> float:
        slope, intercept = fits.get(seed, {}).get(family or "", (math.nan, math.nan))
        return intercept + slope * x

    paired = [s for s in seeds if all(f in fits.get(s, {}) for f in families.values())]
    where = f"10^{low:.2f}-10^{high:.2f} GFLOPs"
    claims = [Claim(
        "scaling-vit-vs-bit", "ViT beats ResNet (BiT) at the same pre-training compute",
        "Fig. 5: ViT dominates ResNets on the performance/compute trade-off (2-4x less compute)",
        f"ViT - BiT fitted {study.metric} averaged over {where}",
        [(at(s, vit, low) + at(s, vit, high) - at(s, bit, low) - at(s, bit, high)) / 2 for s in paired],
        pct([(at(s, vit, low) + at(s, vit, high) - at(s, bit, low) - at(s, bit, high)) / 2 for s in paired]))]
    if hybrid:
        claims.append(Claim(
            "scaling-hybrid-small", "Hybrids beat ViT at small compute",
            "Fig. 5: hybrids above ViT for small budgets", f"hybrid - ViT fitted {study.metric} at 10^{low:.2f} GFLOPs",
            [at(s, hybrid, low) - at(s, vit, low) for s in paired],
            pct([at(s, hybrid, low) - at(s, vit, low) for s in paired])))
        claims.append(Claim(
            "scaling-hybrid-gap-closes", "The hybrid's lead over ViT shrinks as compute grows",
            "Fig. 5: the difference vanishes for larger models",
            f"(hybrid - ViT) at 10^{low:.2f} minus at 10^{high:.2f} GFLOPs",
            [(at(s, hybrid, low) - at(s, vit, low)) - (at(s, hybrid, high) - at(s, vit, high)) for s in paired],
            pct([(at(s, hybrid, low) - at(s, vit, low)) - (at(s, hybrid, high) - at(s, vit, high)) for s in paired])))
    return claims


def posemb_claims(study, points) -> list[Claim]:
    """Table 8: no position embedding is clearly worse; 1-D, 2-D and relative are close (one claim per metric)."""
    claims = []
    labels = list(study.models)
    none = next((label for label in labels if "none" in label.lower()), labels[0])
    kinds = [label for label in labels if label != none]
    for metric in _metrics(study, points):
        table = Table.of(points, metric)
        keys = [(none, None)] + [(k, None) for k in kinds]
        ours = ", ".join(f"{label} {table.summary((label, None))}" for label, _ in keys) + " %"
        worse = table.per_seed(keys, lambda n, *others: min(others) - n)
        claims.append(Claim(
            f"posemb-none-worse-{metric}", f"No position embedding is worse than every kind ({metric})",
            "Table 8: none 61.38% vs 64.00-64.21% (ViT-B/16, ImageNet 5-shot)",
            f"lowest of {'/'.join(kinds)} minus none", worse, ours))
        spread_of_kinds = table.per_seed(keys[1:], lambda *kinds_: max(kinds_) - min(kinds_))
        claims.append(Claim(
            f"posemb-kinds-close-{metric}", f"1-D, 2-D and relative are within {100 * study.tolerance:g} pt ({metric})",
            "Table 8: 64.21 / 64.00 / 64.03% (range 0.2 pt)",
            f"{100 * study.tolerance:g} pt minus the range of the kinds",
            [study.tolerance - r for r in spread_of_kinds], f"range of the kinds {pct(spread_of_kinds)}"))
    return claims


def head_claims(study, points) -> list[Claim]:
    """Figure 9: class token and GAP both work, each at its own learning rate; GAP at the token's rate is worse."""
    table = Table.of(points, study.metric)
    token = next(label for label in study.models if "gap" not in label.lower())
    gap = next(label for label in study.models if "gap" in label.lower())

    def best(label: str) -> float:  # chosen on the mean over seeds, as a sweep would
        return max(study.lrs, key=lambda lr: statistics.fmean(table.values.get((label, lr), {0: -1.0}).values()))

    lr_token, lr_gap = best(token), best(gap)
    keys = [(token, lr_token), (gap, lr_gap)]
    close = table.per_seed(keys, lambda t, g: study.tolerance - abs(t - g))
    keys_worse = [(gap, lr_gap), (gap, lr_token)]
    worse = table.per_seed(keys_worse, lambda own, other: own - other)
    return [
        Claim("head-both-work", f"Class token and GAP reach the same accuracy (within {100 * study.tolerance:g} pt), "
              "each at its best learning rate", "Fig. 9: both ~ the same 5-shot accuracy (token lr 8e-4, GAP 3e-4)",
              f"{100 * study.tolerance:g} pt minus |token(lr={lr_token:g}) - GAP(lr={lr_gap:g})|", close,
              f"token {table.summary(keys[0])} at lr {lr_token:g}, GAP {table.summary(keys[1])} at lr {lr_gap:g} %"),
        Claim("head-gap-needs-own-lr", "GAP at the class token's learning rate does worse than at its own",
              "Fig. 9: GAP at lr 8e-4 clearly below GAP at 3e-4",
              f"GAP(lr={lr_gap:g}) - GAP(lr={lr_token:g})", worse,
              f"GAP {table.summary(keys_worse[0])} at lr {lr_gap:g} vs {table.summary(keys_worse[1])} at lr {lr_token:g} %"),
    ]


def selfsup_claims(study, points) -> list[Claim]:
    """Section 4.6: masked patch prediction beats training from scratch and stays below supervised pre-training."""
    table = Table.of(points, study.metric)
    labels = {label.lower(): label for label in study.models}
    mpp = next(label for key, label in labels.items() if "mpp" in key or "masked" in key)
    scratch = next(label for key, label in labels.items() if "scratch" in key)
    supervised = next(label for key, label in labels.items() if "supervised" in key)
    k_mpp, k_scratch, k_sup = (mpp, None), (scratch, None), (supervised, None)
    ours = f"MPP {table.summary(k_mpp)}, scratch {table.summary(k_scratch)}, supervised {table.summary(k_sup)} %"
    return [
        Claim("selfsup-beats-scratch", "Masked-patch pre-training then fine-tuning beats training from scratch",
              "Sec. 4.6: ViT-B/16 79.9% ImageNet, +2% over scratch", f"MPP - scratch {study.metric}",
              table.per_seed([k_mpp, k_scratch], lambda m, s: m - s), ours),
        Claim("selfsup-below-supervised", "Masked-patch pre-training stays below supervised pre-training",
              "Sec. 4.6: 4% below supervised pre-training", f"supervised - MPP {study.metric}",
              table.per_seed([k_sup, k_mpp], lambda s, m: s - m), ours),
    ]


def learned_claims(study, points) -> list[Claim]:
    """Figure 7: attention distance grows with depth; some heads attend globally already in the lowest layer;
    position embeddings are more similar for nearby patches, with row/column structure."""
    label = next(iter(study.models))

    def seeds_of(metric: str) -> list[float]:
        return [p.metrics[metric] for p in sorted(points, key=lambda p: p.seed)
                if p.label == label and p.metrics.get(metric) is not None]

    def num(metric: str, scale: float = 1.0, unit: str = "") -> str:
        values = seeds_of(metric)
        if not values:
            return "-"
        mean, spread = mean_spread(values)
        return f"{scale * mean:.3g} ± {scale * spread:.2g}{unit}"

    global_threshold = 0.75
    return [
        Claim("learned-distance-grows", "Mean attention distance grows with depth",
              "Fig. 7 right: distance increases with network depth", "slope of the head-mean distance over depth",
              seeds_of("attn_distance_slope"), f"slope {num('attn_distance_slope', unit=' px/layer')}"),
        Claim("learned-global-heads-early", "Some heads attend globally already in the lowest layer",
              "Fig. 7 right: layer-1 heads span ~20 to ~120 px of 224",
              f"largest layer-1 head distance / uniform-attention distance - {global_threshold}",
              [v - global_threshold for v in seeds_of("attn_global_ratio")],
              f"ratio {num('attn_global_ratio')}, layer-1 heads from {num('attn_first_min', unit=' px')} "
              f"to {num('attn_first_max', unit=' px')}"),
        Claim("learned-posemb-locality", "Position embeddings are more similar for nearby patches",
              "Fig. 7 centre: similarity falls with distance", "- Pearson r(cosine similarity, grid distance)",
              [-v for v in seeds_of("posemb_distance_corr")], f"r = {num('posemb_distance_corr')}"),
        Claim("learned-posemb-rowcol", "Patches in the same row or column have more similar embeddings",
              "Fig. 7 centre: row-column structure", "same row/column minus other pairs at equal Manhattan distance",
              seeds_of("posemb_rowcol_gap"), f"gap {num('posemb_rowcol_gap', unit=' cos')}"),
    ]


CLAIMS: dict[str, Callable[[Any, Any], list[Claim]]] = {
    "data_size": data_size_claims,
    "scaling": scaling_claims,
    "posemb": posemb_claims,
    "head": head_claims,
    "selfsup": selfsup_claims,
    "learned": learned_claims,
}


def study_claims(study, points) -> list[Claim]:
    """The claims of ``study``'s kind, computed from ``points``' numbers."""
    return CLAIMS[study.kind](study, points)


def _family_label(study, family: str) -> str:
    for label, variant in study.models.items():
        if variant.family.lower() == family:
            return label
    raise KeyError(f"the study has no {family} model among {list(study.models)}")


def _metrics(study, points) -> list[str]:
    found = {k for p in points for k in p.metrics}
    order = [study.metric] + sorted(k for k in found if k != study.metric and (k.endswith("-shot") or k == "finetune"))
    return [m for m in order if m in found] or [study.metric]


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx
