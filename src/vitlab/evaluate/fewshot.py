"""Few-shot linear evaluation: a frozen representation, a closed-form ridge regression, 1/5/10/25 shots.

The paper reports "few-shot linear accuracy" next to fine-tuning accuracy because it is cheap: no gradient
step touches the network. The recipe (big_vision's ``fewshot_lsr`` evaluator, the paper's Section 4.1):

1. extract a representation of every image with the frozen model (``pre_logits`` by default);
2. standardise each feature with the few-shot train set's mean and std (eps 1e-5), append a constant bias
   feature of 100 (large, so that the ridge penalty barely touches the bias);
3. regress targets ``2 * onehot - 1`` (in {-1, 1}^K) with an L2 penalty, in closed form;
4. predict the arg-max of the regression outputs on the test set.

Why the eigendecomposition: with ``X`` the ``[N, D]`` augmented features, the ridge solution is
``W = (X^T X + l2 I)^-1 X^T Y`` (or, when ``N < D``, ``X^T (X X^T + l2 I)^-1 Y``). Decomposing the Gram
matrix once, ``Q diag(e) Q^T``, turns every l2 into a diagonal rescaling, so a grid of l2 values chosen on a
dev split costs no more than one.

Everything runs in float64: a few-shot Gram matrix with a bias feature of 100 is badly conditioned.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from vitlab.data import build_stream
from vitlab.data.splits import few_shot_indices
from vitlab.errors import ConfigError, DataError, ShapeError

log = logging.getLogger(__name__)

# big_vision fewshot_lsr: features are standardised with std + 1e-5 and padded with a constant 100.
STD_EPS = 1e-5
BIAS_CONSTANT = 100.0
# The paper's fixed ridge penalty (big_vision configs: l2_reg = 2 ** 10) and shot counts.
DEFAULT_L2 = 2.0**10
DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_SEEDS = (0, 1, 2)  # the paper averages few-shot results over 3 random draws
# Grid searched when l2 is chosen on a dev split (powers of two around the paper's value).
L2_GRID = tuple(2.0**k for k in range(-4, 21, 2))

REPRESENTATIONS = ("pre_logits", "pooled", "token", "gap")


# ---- the closed-form solver -------------------------------------------------------------------------------
def standardise(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` then the constant bias column: ``[N, D] -> [N, D + 1]``."""
    x = (features.to(torch.float64) - mean) / std
    bias = torch.full((x.shape[0], 1), BIAS_CONSTANT, dtype=x.dtype, device=x.device)
    return torch.cat([x, bias], dim=1)


def ridge_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets in {-1, 1}: ``2 * onehot - 1``, ``[N] -> [N, K]``."""
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)
    return 2.0 * onehot - 1.0


@dataclass
class RidgeSolver:
    """A ridge regression fitted once, solvable for any l2 by rescaling eigenvalues.

    ``W(l2) = lhs @ diag(1 / (eigs + l2)) @ rhs`` where, for ``N >= D``, ``lhs = Q`` and ``rhs = Q^T X^T Y``
    (``Q`` diagonalises ``X^T X``), and for ``N < D``, ``lhs = X^T Q`` and ``rhs = Q^T Y`` (``Q`` diagonalises
    ``X X^T``). Both follow from ``(X^T X + l2 I)^-1 X^T = X^T (X X^T + l2 I)^-1``.
    """

    mean: torch.Tensor  # [1, D]
    std: torch.Tensor  # [1, D]
    eigs: torch.Tensor  # [min(N, D+1)]
    lhs: torch.Tensor  # [D+1, min(N, D+1)]
    rhs: torch.Tensor  # [min(N, D+1), K]
    num_classes: int

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "RidgeSolver":
        """Precompute the eigendecomposition for ``features [N, D]`` and integer ``labels [N]``."""
        if features.ndim != 2:
            raise ShapeError(f"few-shot features must be [N, D], got shape {tuple(features.shape)}")
        if len(features) != len(labels) or len(features) == 0:
            raise DataError(f"few-shot fit needs as many labels as feature rows (>0), got {len(features)} rows "
                            f"and {len(labels)} labels")
        features = features.to(torch.float64)
        mean = features.mean(dim=0, keepdim=True)
        std = features.std(dim=0, unbiased=False, keepdim=True) + STD_EPS
        x = standardise(features, mean, std)  # [N, D+1]
        y = ridge_targets(labels, num_classes)  # [N, K]
        if x.shape[0] >= x.shape[1]:
            eigs, q = torch.linalg.eigh(x.T @ x)  # q: [D+1, D+1]
            lhs, rhs = q, q.T @ (x.T @ y)
        else:
            eigs, q = torch.linalg.eigh(x @ x.T)  # q: [N, N]
            lhs, rhs = x.T @ q, q.T @ y
        # The Gram matrix is positive semi-definite; round-off can leave tiny negative eigenvalues.
        return cls(mean, std, eigs.clamp_min(0.0), lhs, rhs, num_classes)

    def weights(self, l2: float) -> torch.Tensor:
        """The ridge weights ``[D+1, K]`` for penalty ``l2`` (the last row multiplies the bias feature)."""
        if not l2 > 0:
            raise ConfigError(f"few-shot l2={l2!r} is invalid; expected a positive number")
        return (self.lhs / (self.eigs + l2)) @ self.rhs

    def scores(self, features: torch.Tensor, l2: float) -> torch.Tensor:
        """Regression outputs ``[M, K]`` for ``features [M, D]`` (standardised with the train statistics)."""
        return standardise(features, self.mean, self.std) @ self.weights(l2)

    def predict(self, features: torch.Tensor, l2: float) -> torch.Tensor:
        return self.scores(features, l2).argmax(dim=1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor, l2: float) -> float:
        if len(labels) == 0:
            raise DataError("few-shot accuracy over an empty set")
        return float((self.predict(features, l2) == labels.to(features.device)).double().mean())


def fewshot_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                     test_labels: torch.Tensor, num_classes: int, l2: float = DEFAULT_L2) -> float:
    """One few-shot linear accuracy: fit on the train features, score on the test features."""
    return RidgeSolver.fit(train_features, train_labels, num_classes).accuracy(test_features, test_labels, l2)


def choose_l2(solver: RidgeSolver, dev_features: torch.Tensor, dev_labels: torch.Tensor,
              grid: Sequence[float] = L2_GRID) -> float:
    """The l2 of ``grid`` with the best dev accuracy (the larger l2 on ties: the simpler model)."""
    best_l2, best_acc = None, -1.0
    for l2 in sorted(grid, reverse=True):
        acc = solver.accuracy(dev_features, dev_labels, l2)
        if acc > best_acc:
            best_l2, best_acc = l2, acc
    assert best_l2 is not None
    return best_l2


# ---- representations ---------------------------------------------------------------------------------------
def representation(model: nn.Module, images: torch.Tensor, name: str = "pre_logits") -> torch.Tensor:
    """The named representation ``[B, D]`` of a frozen model.

    ``pre_logits`` (default): what the head would see; ``pooled``: the class token (or GAP) after the final
    LayerNorm, before any pre-logits layer; ``token``: the class token; ``gap``: the mean of the patch tokens.
    ViTs name their intermediates (``forward_intermediates``); any other model offers ``pre_logits`` through
    ``forward_head(forward_features(x), pre_logits=True)``.
    """
    if name not in REPRESENTATIONS and not name.startswith("block_"):
        raise ConfigError(f"representation={name!r} is unknown; expected one of {', '.join(REPRESENTATIONS)} "
                          "or block_<i>")
    intermediates = getattr(model, "forward_intermediates", None)
    if intermediates is None:
        if name != "pre_logits":
            raise ConfigError(f"representation={name!r}: {type(model).__name__} only offers 'pre_logits'")
        return model.forward_head(model.forward_features(images), pre_logits=True)
    out = intermediates(images)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if name in ("token", "gap") or name.startswith("block_"):
        tokens = out.get("encoded") if not name.startswith("block_") else out.get(name)
        if tokens is None or tokens.ndim != 3:
            raise ConfigError(f"representation={name!r}: {type(model).__name__} has no token sequence")
        if name == "token":
            if prefix == 0:
                raise ConfigError("representation='token': the model has no class token (classifier='gap'); "
                                  "use 'gap' or 'pooled'")
            return tokens[:, 0]
        return tokens[:, prefix:].mean(dim=1)  # gap (and block_<i>): mean over patch tokens
    if name == "pooled" and "pooled" not in out:
        name = "pre_logits"  # CNNs: the globally pooled feature is their pre-logits
    return out[name]


@torch.no_grad()
def extract_features(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                     representation_name: str = "pre_logits",
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D] float32 on CPU, labels [N] int64)`` over every batch, the model in eval mode."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for images, targets in batches:
            rep = representation(model, images.to(device), representation_name)
            feats.append(rep.float().cpu())
            labels.append(targets.argmax(-1) if targets.ndim > 1 else targets)
    finally:
        model.train(was_training)
    if not feats:
        raise DataError("few-shot feature extraction saw no images")
    return torch.cat(feats), torch.cat(labels).long()


# ---- sampling shots ----------------------------------------------------------------------------------------
def sample_shots(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """``shots`` indices per class, drawn without replacement, deterministic from ``seed``: the data layer's
    :func:`vitlab.data.splits.few_shot_indices`, so that every tool of vitlab draws the same k-shot subsets."""
    return torch.as_tensor(few_shot_indices(labels, shots, seed), dtype=torch.int64)


# ---- the whole evaluation ----------------------------------------------------------------------------------
@dataclass
class ShotResult:
    """Accuracy (fractions) of one shot count over the seeds."""

    shots: int
    accuracies: list[float]
    l2: list[float]

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def std(self) -> float:
        """Population spread over the seeds (0 with one seed)."""
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / len(self.accuracies))

    def to_dict(self) -> dict[str, Any]:
        return {"shots": self.shots, "mean": self.mean, "std": self.std, "accuracies": self.accuracies,
                "l2": self.l2}


@dataclass
class FewShotReport:
    dataset: str
    representation: str
    num_classes: int
    test_examples: int
    results: list[ShotResult] = field(default_factory=list)
    l2_mode: str = "fixed"

    def by_shots(self) -> dict[int, ShotResult]:
        return {r.shots: r for r in self.results}

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "representation": self.representation, "num_classes": self.num_classes,
                "test_examples": self.test_examples, "l2_mode": self.l2_mode,
                "results": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        """A Markdown table: shots, mean accuracy (%), spread over seeds, seeds, l2."""
        lines = [f"few-shot linear evaluation: {self.dataset} ({self.num_classes} classes, "
                 f"{self.test_examples} test images, representation {self.representation}, l2 {self.l2_mode})",
                 "", "| shots | accuracy % | ± std | seeds | l2 |", "|---:|---:|---:|---:|---|"]
        for r in self.results:
            l2s = sorted(set(r.l2))
            l2_text = ", ".join(f"2^{math.log2(v):g}" for v in l2s)
            lines.append(f"| {r.shots} | {100 * r.mean:.2f} | {100 * r.std:.2f} | {len(r.accuracies)} | {l2_text} |")
        return "\n".join(lines)


def evaluate_features(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, num_classes: int, *, shots: Sequence[int] = DEFAULT_SHOTS,
                      seeds: Sequence[int] = DEFAULT_SEEDS, l2: float | str = DEFAULT_L2,
                      dev_features: torch.Tensor | None = None, dev_labels: torch.Tensor | None = None,
                      l2_grid: Sequence[float] = L2_GRID) -> list[ShotResult]:
    """Few-shot accuracies from precomputed features: for each shot count and seed draw the shots from the
    train pool, fit, and score the test set. ``l2="dev"`` picks l2 per draw on the dev features."""
    if l2 == "dev" and (dev_features is None or dev_labels is None):
        raise ConfigError("few-shot l2='dev' needs dev features (a dev split held out of the train pool)")
    results = []
    for k in shots:
        if k < 1:
            raise ConfigError(f"few-shot shots={k} is invalid; expected a positive integer")
        accs, l2s = [], []
        for seed in seeds:
            idx = sample_shots(train_labels, k, seed)
            solver = RidgeSolver.fit(train_features[idx], train_labels[idx], num_classes)
            chosen = choose_l2(solver, dev_features, dev_labels, l2_grid) if l2 == "dev" else float(l2)
            accs.append(solver.accuracy(test_features, test_labels, chosen))
            l2s.append(chosen)
        results.append(ShotResult(k, accs, l2s))
        log.info("few-shot %d-shot: %.2f%% ± %.2f over %d seeds", k, 100 * results[-1].mean,
                 100 * results[-1].std, len(seeds))
    return results


def _model_input(model: nn.Module, img_size: int | None, in_chans: int | None) -> tuple[int, int]:
    config = getattr(model, "config", None)
    size = img_size
    if size is None:
        model_size = getattr(config, "img_size", None)
        if model_size is None:
            raise ConfigError("few-shot: give img_size (the model has no config.img_size)")
        size = model_size[0] if isinstance(model_size, (tuple, list)) else int(model_size)
    chans = in_chans if in_chans is not None else int(getattr(config, "in_chans", 3))
    return int(size), chans


def _pool_indices(labels: torch.Tensor, shots: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """Every train index any (shot, seed) draw uses: only these images need features."""
    chosen = [sample_shots(labels, k, s) for k in shots for s in seeds]
    return torch.unique(torch.cat(chosen))


def _subsample(n: int, limit: int | None, seed: int) -> torch.Tensor | None:
    if limit is None or limit >= n:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:limit].sort().values


def fewshot_evaluate(model: nn.Module, train_source: Any, test_source: Any, *,
                     shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = DEFAULT_SEEDS,
                     l2: float | str = DEFAULT_L2, representation_name: str = "pre_logits",
                     img_size: int | None = None, in_chans: int | None = None, batch_size: int = 256,
                     device: torch.device | str = "cpu", test_limit: int | None = None,
                     dev_size: int = 1000, dataset: str | None = None) -> FewShotReport:
    """Few-shot linear evaluation of a frozen ``model`` on any pair of data-layer sources.

    Only the images that some draw uses are passed through the model (at most ``max(shots) * K * len(seeds)``
    train images), plus the test set (``test_limit`` caps it with a fixed random subset). With ``l2="dev"``
    a dev split of ``dev_size`` images is held out of the train pool first and never drawn as a shot.
    """
    size, chans = _model_input(model, img_size, in_chans)
    train_labels = _labels_of(train_source)
    num_classes = int(getattr(train_source, "num_classes", int(train_labels.max()) + 1))

    def features(source: Any, indices: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        stream = build_stream(source, batch_size=batch_size, train=False, img_size=size, in_chans=chans,
                              indices=None if indices is None else indices.tolist())
        found = extract_features(model, stream, representation_name=representation_name, device=device)
        if stream.dropped and source is train_source:  # evaluation streams leave bad images out, never replace
            raise DataError(f"{getattr(source, 'name', 'train source')}: {stream.dropped} unreadable image(s) in the "
                            "few-shot pool; pass verify='full' to drop bad files from the source up front")
        return found

    pool = torch.arange(len(train_labels))
    dev_feats = dev_labels = None
    if l2 == "dev":
        generator = torch.Generator().manual_seed(1234)
        order = torch.randperm(len(pool), generator=generator)
        n_dev = min(dev_size, len(pool) // 5)
        dev_idx, pool = order[:n_dev].sort().values, order[n_dev:].sort().values
        dev_feats, dev_labels = features(train_source, dev_idx)
    elif not isinstance(l2, (int, float)):
        raise ConfigError(f"few-shot l2={l2!r} is invalid; expected a positive number or 'dev'")
    used = pool[_pool_indices(train_labels[pool], shots, seeds)]  # positions in the source
    train_feats_used, _ = features(train_source, used)
    # Scatter back so that draws index the pool as they did when the indices were chosen.
    train_feats = torch.zeros(len(pool), train_feats_used.shape[1])
    position = {int(p): i for i, p in enumerate(pool.tolist())}
    train_feats[[position[int(u)] for u in used.tolist()]] = train_feats_used
    test_idx = _subsample(len(test_source), test_limit, seed=0)
    test_feats, test_labels = features(test_source, test_idx)
    results = evaluate_features(train_feats, train_labels[pool], test_feats, test_labels, num_classes,
                                shots=shots, seeds=seeds, l2=l2, dev_features=dev_feats, dev_labels=dev_labels)
    return FewShotReport(dataset=dataset or str(getattr(train_source, "name", "dataset")).split(":")[0],
                         representation=representation_name, num_classes=num_classes,
                         test_examples=len(test_labels), results=results,
                         l2_mode="dev" if l2 == "dev" else f"2^{math.log2(float(l2)):g}")


def _labels_of(source: Any) -> torch.Tensor:
    labels = getattr(source, "labels", None)
    if labels is None:
        labels = [source[i][1] for i in range(len(source))]
    return torch.as_tensor(labels, dtype=torch.int64)
