"""Find near-duplicates of downstream test images inside a pre-training source, and exclude them.

The paper de-duplicates its pre-training sets against the test sets of the transfer tasks (following
Kolesnikov et al., BiT), so that transfer numbers do not reward memorisation. Copies found on the web
are rarely byte-identical: they are resized, re-compressed and slightly shifted. Three stages, each
cheaper per pair than the next and each cutting the pairs the next must look at:

1. **Perceptual hash (candidates).** Every image becomes a 32x32 grey thumbnail (mildly blurred) whose
   8x8 lowest DCT frequencies, thresholded at their median, give a 63-bit hash. Resizing and JPEG noise
   barely move low frequencies, but a shift of one or two pixels flips many bits, so each *query* is
   hashed at every half-pixel shift of up to ``max_shift`` pixels and the closest counts. Pairs within
   ``max_hamming`` bits are candidates. The pre-training side is hashed once and never held in memory.
2. **Coarse correlation.** The best Pearson correlation between the query's views (half-pixel shifts)
   and the candidate, both as the same thumbnails; pairs below ``min_coarse`` are dropped.
3. **Fine correlation.** The pair is compared at the larger of the two images' own resolutions (capped
   at 64 px; the smaller one is upsampled bicubically), at every whole-pixel shift covering
   ``max_shift`` thumbnail pixels. Pairs reaching ``min_correlation`` are duplicates. Optionally a
   feature function (e.g. a model's pre-logits) adds a cosine-similarity test.

What counts as a duplicate is therefore: *the same picture up to resampling, compression and a small
shift, with correlation >= min_correlation at native resolution*. Note that this also catches distinct
but pixel-wise nearly identical photos (Fashion-MNIST has many: the same garment shot in two colours),
which is what de-duplication is for.

Output: a JSON report (settings, counts, every matched pair) and an exclusion list (one pre-training
index per line). Pre-training honours it through ``indices=``::

    keep = remaining_indices(len(source), load_exclusions("dedup/exclusions.txt"))
    stream = build_stream(source, ..., indices=keep)
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

THUMB = 32      # thumbnail side for hashing and coarse correlation
HASH_SIDE = 8   # 8x8 lowest DCT frequencies (minus DC) -> 63-bit hash
FINE_MAX = 64   # fine correlation works at native resolution up to this many pixels


@dataclass(frozen=True)
class DedupConfig:
    max_hamming: int = 12           # stage 1: candidate if hashes differ in at most this many of 63 bits
    max_shift: int = 2              # shifts searched, in thumbnail (32 px) pixels
    min_coarse: float = 0.97        # stage 2: thumbnail correlation needed to go on
    min_correlation: float = 0.985  # stage 3: native-resolution correlation that makes a duplicate
    min_cosine: float = 0.9         # with a feature function: duplicate also needs this cosine similarity
    batch_size: int = 512
    query_block: int = 2048         # queries per pass over the corpus (their shifted views take ~300 kB each)
    num_threads: int | None = 1     # torch threads while searching (many tiny ops: 1 is fastest on a busy
                                    # machine); None leaves the setting alone


@dataclass
class Match:
    query: int        # index into the test (query) source
    corpus: int       # index into the pre-training source
    hamming: int
    correlation: float
    cosine: float | None = None


@dataclass
class DedupResult:
    matches: list[Match]
    num_queries: int
    num_corpus: int
    num_candidates: int
    num_coarse: int
    config: DedupConfig
    meta: dict = field(default_factory=dict)

    @property
    def excluded(self) -> list[int]:
        """Sorted pre-training indices to leave out."""
        return sorted({m.corpus for m in self.matches})

    def report(self) -> dict:
        queries_hit = len({m.query for m in self.matches})
        return {
            "config": asdict(self.config), "num_queries": self.num_queries, "num_corpus": self.num_corpus,
            "num_candidates": self.num_candidates, "num_after_coarse": self.num_coarse,
            "num_matches": len(self.matches), "num_excluded": len(self.excluded),
            "queries_with_duplicates": queries_hit, **self.meta, "matches": [asdict(m) for m in self.matches],
        }


# ---------------------------------------------------------------------------------------------------------
# Image representations
# ---------------------------------------------------------------------------------------------------------
def _dct_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()  # orthonormal DCT-II


_DCT = _dct_matrix(THUMB)


def grey(images: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` (0..255) -> float ``[B, 1, H, W]`` luma."""
    x = images.float()
    if x.shape[1] == 3:
        return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x.mean(1, keepdim=True) if x.shape[1] != 1 else x


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic when enlarging (keeps edges sharp), antialiased bilinear when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] >= x.shape[-2] and size[1] >= x.shape[-1]:
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 255)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Flatten all but the first dim, remove the mean, scale to unit norm: dot products are correlations."""
    x = x.flatten(1)
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)


def thumbnails(images: torch.Tensor, blur: bool = True) -> torch.Tensor:
    """uint8/float ``[B, C, H, W]`` -> grey ``[B, 32, 32]``, zero mean and unit norm (blurred for hashing)."""
    x = _resize(grey(images), (THUMB, THUMB))
    if blur:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return _unit(x).view(-1, THUMB, THUMB)


def phash(thumbs: torch.Tensor) -> torch.Tensor:
    """63 sign bits (as +-1 floats) of the lowest DCT frequencies relative to their median."""
    side = thumbs.shape[-1]
    dct = _DCT if side == THUMB else _dct_matrix(side)
    coeffs = dct @ thumbs @ dct.T  # [B, side, side]
    low = coeffs[:, :HASH_SIDE, :HASH_SIDE].flatten(1)[:, 1:]  # drop DC: [B, 63]
    median = low.median(dim=1, keepdim=True).values
    return torch.where(low > median, 1.0, -1.0)


def shifted_copies(thumbs: torch.Tensor, shift: float, step: float = 1.0) -> torch.Tensor:
    """``[B, 32, 32] -> [B, V, 32, 32]``: translations by up to ``shift`` pixels in ``step``s (edges repeated)."""
    offsets = np.arange(-shift, shift + 1e-6, step)
    views = []
    for dy in offsets:
        for dx in offsets:
            theta = torch.tensor([[1.0, 0.0, 2 * dx / THUMB], [0.0, 1.0, 2 * dy / THUMB]],
                                 dtype=torch.float32).expand(len(thumbs), 2, 3)
            grid = F.affine_grid(theta, (len(thumbs), 1, THUMB, THUMB), align_corners=False)
            views.append(F.grid_sample(thumbs[:, None], grid, mode="bilinear", padding_mode="border",
                                       align_corners=False)[:, 0])
    return torch.stack(views, dim=1)


def _fine(image: torch.Tensor) -> torch.Tensor:
    """One image -> grey float ``[1, 1, h, w]`` with its longer side capped at FINE_MAX."""
    x = grey(image.unsqueeze(0))
    h, w = x.shape[-2:]
    if max(h, w) > FINE_MAX:
        scale = FINE_MAX / max(h, w)
        x = _resize(x, (max(1, round(h * scale)), max(1, round(w * scale))))
    return x


class _Batch:
    """One chunk of images in the three representations (computed per shape group: tiny ops are slow)."""

    def __init__(self, fines: list[torch.Tensor]):
        self.fines = fines
        self.thumbs = torch.empty(len(fines), THUMB, THUMB)
        groups: dict[tuple, list[int]] = {}
        for j, f in enumerate(fines):
            groups.setdefault(tuple(f.shape), []).append(j)
        for members in groups.values():
            stack = torch.cat([fines[j] for j in members])  # [n, 1, h, w]
            index = torch.as_tensor(members)
            self.thumbs[index] = thumbnails(stack)


def _source_batches(source, indices: np.ndarray, batch_size: int):
    """Yield (indices, _Batch) chunk by chunk; file sources are decoded small (<= 64 px)."""
    images_attr = getattr(source, "images", None)
    load = getattr(source, "load", None)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        if images_attr is not None:
            stack = images_attr.index_select(0, torch.as_tensor(chunk))
            fines = list(_fine_stack(stack))
        else:
            fines = []
            for i in chunk:
                if load is not None:  # file sources: let the decoder shrink JPEGs while decoding
                    image, _ = load(int(i), size=(FINE_MAX, FINE_MAX))
                else:
                    image, _ = source[int(i)]
                fines.append(_fine(image))
        yield chunk, _Batch(fines)


def _fine_stack(stack: torch.Tensor):
    x = grey(stack)
    h, w = x.shape[-2:]
    if max(h, w) > FINE_MAX:
        scale = FINE_MAX / max(h, w)
        x = _resize(x, (max(1, round(h * scale)), max(1, round(w * scale))))
    return x.split(1)


def _box_sums(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Sums of every ``window``-sized box of ``x [n, H, W]`` (all positions), from an integral image."""
    x = x.double()  # integral images of 64x64 pixel values need more than float32's 24 bits
    integral = F.pad(x.cumsum(1).cumsum(2), (1, 0, 1, 0))
    h, w = window
    return (integral[:, h:, w:] - integral[:, :-h, w:] - integral[:, h:, :-w] + integral[:, :-h, :-w]).float()


def fine_correlation(a: list[torch.Tensor], b: list[torch.Tensor], max_shift: float) -> torch.Tensor:
    """Best Pearson correlation of image pairs at the larger native size, over whole-pixel shifts.

    ``max_shift`` is in thumbnail pixels and scales with the comparison size. The correlation is taken over
    the interior (a border as wide as the largest shift is left out), so edge fill does not count.
    """
    out = torch.empty(len(a))
    groups: dict[tuple, list[int]] = {}
    for j, (x, y) in enumerate(zip(a, b)):
        groups.setdefault((tuple(x.shape[-2:]), tuple(y.shape[-2:])), []).append(j)
    for (sa, sb), members in groups.items():
        size = (max(sa[0], sb[0]), max(sa[1], sb[1]))
        s = max(1, math.ceil(max_shift * max(size) / THUMB))
        if min(size) <= 2 * s + 2:
            s = max(0, (min(size) - 3) // 2)
        xa = _resize(torch.cat([a[j] for j in members]), size)  # [n, 1, H, W]
        xb = _resize(torch.cat([b[j] for j in members]), size)
        h, w = size
        inner = xa[:, :, s:h - s, s:w - s]
        kernel = _unit(inner).view_as(inner)  # zero mean: sum(k * window) = covariance * |window - mean|
        n_px = kernel.shape[-1] * kernel.shape[-2]
        # cross-correlation at every shift in one grouped convolution; window statistics by box filters
        dots = F.conv2d(xb.view(1, -1, h, w), kernel, groups=len(members))[0]  # [n, 2s+1, 2s+1]
        total = _box_sums(xb[:, 0], kernel.shape[-2:])  # [n, 2s+1, 2s+1]
        total_sq = _box_sums(xb[:, 0] * xb[:, 0], kernel.shape[-2:])
        spread = (total_sq - total * total / n_px).clamp(min=1e-6).sqrt()
        best = (dots / spread).flatten(1).amax(dim=1)
        out[torch.as_tensor(members)] = best
    return out


# ---------------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------------
def find_near_duplicates(queries, corpus, *, config: DedupConfig = DedupConfig(),
                         query_indices: Sequence[int] | None = None, corpus_indices: Sequence[int] | None = None,
                         features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> DedupResult:
    """Near-duplicates of ``queries`` (test images) among ``corpus`` (pre-training images).

    Both are sources (``len``, ``[i] -> (image, label)``); in-memory sources are read in batches, file
    sources decoded small. The corpus is read once, chunk by chunk; each chunk's candidates are verified
    at once and only matches are kept, so memory does not grow with the corpus. ``features``, when given,
    maps a uint8 image batch ``[1, C, H, W]`` to a feature vector and adds the cosine test.
    """
    check_config(config)
    previous = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    q_all = np.arange(len(queries)) if query_indices is None else np.asarray(query_indices, dtype=np.int64)
    try:
        parts = [_search(queries, corpus, config, q_all[i:i + config.query_block], corpus_indices, features)
                 for i in range(0, max(len(q_all), 1), config.query_block)]
    finally:
        torch.set_num_threads(previous)
    return DedupResult([m for p in parts for m in p.matches], len(q_all), parts[0].num_corpus,
                       sum(p.num_candidates for p in parts), sum(p.num_coarse for p in parts), config)


def _search(queries, corpus, config: DedupConfig, query_indices, corpus_indices, features) -> DedupResult:
    q_idx = np.arange(len(queries)) if query_indices is None else np.asarray(query_indices, dtype=np.int64)
    c_idx = np.arange(len(corpus)) if corpus_indices is None else np.asarray(corpus_indices, dtype=np.int64)
    if len(q_idx) == 0 or len(c_idx) == 0:
        raise DataError("de-dup needs at least one query and one corpus image")
    q_fines: list[torch.Tensor] = []
    q_thumbs = []
    for _, batch in _source_batches(queries, q_idx, config.batch_size):
        q_fines += batch.fines
        q_thumbs.append(batch.thumbs)
    # A copy may be shifted by a pixel or two, which flips hash bits and lowers correlation: each query is
    # also taken at every half-pixel shift up to max_shift ("views") and its best view counts. Only the
    # (small) query side is multiplied; the corpus is hashed once.
    thumbs = torch.cat(q_thumbs)
    # Only the interior is compared: a shifted view's border is filled in, a shifted copy's is not.
    inner = slice(math.ceil(config.max_shift), THUMB - math.ceil(config.max_shift))
    hash_views = shifted_copies(thumbs, config.max_shift, step=1.0)[:, :, inner, inner]  # [Q, V, h, w]
    num_views = hash_views.shape[1]
    q_hash = phash(hash_views.flatten(0, 1))  # [Q*V, 63]
    bits = q_hash.shape[1]
    views = shifted_copies(thumbs, config.max_shift, step=0.5)[:, :, inner, inner]  # finer, for stage 2
    q_views = _unit(views.flatten(0, 1)).view(len(q_idx), views.shape[1], -1)  # [Q, V2, inner pixels]
    q_block = max(1, 8192 // num_views)  # queries per hash matmul (bounds memory)
    matches: list[Match] = []
    num_candidates = num_coarse = 0
    for chunk, batch in _source_batches(corpus, c_idx, config.batch_size):
        c_inner = batch.thumbs[:, inner, inner]
        c_hash = phash(c_inner)  # [n, 63]
        c_flat = _unit(c_inner)  # [n, inner pixels]
        for q0 in range(0, len(q_idx), q_block):
            block = q_hash[q0 * num_views:(q0 + q_block) * num_views]
            dots = (block @ c_hash.T).view(-1, num_views, len(chunk)).amax(dim=1)  # best view per pair
            hamming = ((bits - dots) / 2).round().to(torch.int64)  # [q_block, n]
            qi, ci = torch.nonzero(hamming <= config.max_hamming, as_tuple=True)
            num_candidates += len(qi)
            pairs_q, pairs_c = [], []
            starts = torch.searchsorted(qi, torch.arange(int(qi.max()) + 2)) if len(qi) else torch.zeros(1)
            for q in torch.unique(qi).tolist():  # stage 2, one matmul per query (qi is sorted)
                cs = ci[starts[q]:starts[q + 1]]
                coarse = (q_views[q + q0] @ c_flat[cs].T).amax(dim=0)
                keep = cs[coarse >= config.min_coarse]
                pairs_q += [q + q0] * len(keep)
                pairs_c += keep.tolist()
            num_coarse += len(pairs_q)
            if not pairs_q:
                continue
            corr = fine_correlation([q_fines[q] for q in pairs_q], [batch.fines[c] for c in pairs_c],
                                    config.max_shift)  # stage 3
            for j in torch.nonzero(corr >= config.min_correlation).flatten().tolist():
                q, c = pairs_q[j], pairs_c[j]
                cos = None
                if features is not None:
                    cos = float(_feature_cosine(features, queries, corpus, q_idx[[q]], chunk[[c]])[0])
                    if cos < config.min_cosine:
                        continue
                matches.append(Match(int(q_idx[q]), int(chunk[c]), int(hamming[q - q0, c]),
                                     round(float(corr[j]), 4), None if cos is None else round(cos, 4)))
    log.info("de-dup: %d hash candidates, %d after coarse check, %d duplicates (%d queries x %d images)",
             num_candidates, num_coarse, len(matches), len(q_idx), len(c_idx))
    matches.sort(key=lambda m: (m.query, m.corpus))
    return DedupResult(matches, len(q_idx), len(c_idx), num_candidates, num_coarse, config)


def _feature_cosine(features, queries, corpus, q_index: np.ndarray, c_index: np.ndarray) -> torch.Tensor:
    def embed(source, index):
        out = []
        for i in index:
            image, _ = source[int(i)]
            out.append(features(image.unsqueeze(0)).reshape(-1))
        return F.normalize(torch.stack(out).float(), dim=1)

    return (embed(queries, q_index) * embed(corpus, c_index)).sum(1)


# ---------------------------------------------------------------------------------------------------------
# Report and exclusion list
# ---------------------------------------------------------------------------------------------------------
def write_report(results: DedupResult | dict[str, DedupResult], out_dir: str | os.PathLike,
                 meta: dict | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``exclusions.txt`` (one pre-training index per line) into ``out_dir``.

    ``results`` is one result or several keyed by test-set name; the exclusion list is their union.
    """
    if isinstance(results, DedupResult):
        results = {"test": results}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    excluded = sorted(set().union(*(r.excluded for r in results.values())))
    report = {**(meta or {}), "num_excluded": len(excluded),
              "against": {name: r.report() for name, r in results.items()}}
    report_path, excl_path = out / "report.json", out / "exclusions.txt"
    _atomic_write(report_path, json.dumps(report, indent=1) + "\n")
    _atomic_write(excl_path, "".join(f"{i}\n" for i in excluded))
    return report_path, excl_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_exclusions(path: str | os.PathLike) -> set[int]:
    """Pre-training indices to exclude: a text file (one index per line, ``#`` comments) or JSON
    (a list of indices, or an object with ``"excluded"``/``"exclude"`` list, or a dedup ``report.json``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"exclusion list {path}: cannot read ({error.strerror or error})") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: invalid JSON ({error})") from None
        if isinstance(data, dict):
            if "against" in data:  # a report.json written by write_report
                data = [m["corpus"] for r in data["against"].values() for m in r["matches"]]
            else:
                data = data.get("excluded", data.get("exclude"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of indices or {{'excluded': [...]}}")
        values = data
    else:
        values = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                values.append(int(line))
            except ValueError:
                raise DataError(f"{path}:{line_no}: expected an integer index, got {line!r}") from None
    out = set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{path}: exclusion {value!r} is not a non-negative integer index")
        out.add(value)
    return out


def remaining_indices(n_or_indices, exclusions: set[int]) -> np.ndarray:
    """``indices=`` for a pre-training stream: everything (or the given indices) minus the exclusions."""
    base = np.arange(n_or_indices) if isinstance(n_or_indices, (int, np.integer)) else np.asarray(n_or_indices)
    if not exclusions:
        return base.astype(np.int64)
    mask = ~np.isin(base, np.fromiter(exclusions, dtype=np.int64))
    return base[mask].astype(np.int64)


def check_config(config: DedupConfig) -> None:
    if (not 0 <= config.max_hamming <= 63 or config.max_shift < 0 or not -1 <= config.min_correlation <= 1
            or not -1 <= config.min_coarse <= 1 or config.batch_size <= 0 or config.query_block <= 0):
        raise ConfigError(f"invalid de-dup settings {config}")
