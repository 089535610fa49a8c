"""De-duplication: planted near-duplicates of test images are found; exclusion lists round-trip."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitlab.cli import main
from vitlab.data import build_stream, get_source
from vitlab.data.dedup import find_near_duplicates, load_exclusions, remaining_indices, write_report
from vitlab.data.download import locate_fashion_mnist
from vitlab.errors import DataError


def plant_copy(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A web-style copy: enlarged to 30..64 px (bicubic), shifted 1-2 px, re-encoded as JPEG (quality 70..95)."""
    side = int(rng.integers(30, 65))
    big = np.asarray(Image.fromarray(image[0].numpy()).resize((side, side), Image.BICUBIC))
    dy, dx = rng.choice([-2, -1, 1, 2], 2)
    shifted = np.zeros_like(big)
    shifted[max(dy, 0):side + min(dy, 0), max(dx, 0):side + min(dx, 0)] = \
        big[max(-dy, 0):side + min(-dy, 0), max(-dx, 0):side + min(-dx, 0)]
    buf = io.BytesIO()
    Image.fromarray(shifted).save(buf, "JPEG", quality=int(rng.integers(70, 96)))
    return torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("L")))[None]


class ListSource:
    """Images of mixed sizes: the source protocol is all de-dup needs."""

    def __init__(self, images):
        self.images_list = images

    def __len__(self):
        return len(self.images_list)

    def __getitem__(self, i):
        return self.images_list[i], 0


def _natural_duplicates(queries: torch.Tensor, pool: torch.Tensor, threshold: float) -> np.ndarray:
    """Mask of pool images that already nearly equal some query at native resolution (+-1 px shift)."""
    def unit(x):
        x = x.flatten(1).float()
        x = x - x.mean(1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)

    padded = F.pad(queries.float(), (1, 1, 1, 1), mode="replicate")
    pool_unit = unit(pool)
    best = torch.full((len(pool),), -1.0)
    for dy in range(3):
        for dx in range(3):
            best = torch.maximum(best, (unit(padded[:, :, dy:dy + 28, dx:dx + 28]) @ pool_unit.T).amax(0))
    return (best >= threshold).numpy()


def test_planted_near_duplicates_are_found():
    """200 Fashion-MNIST test images, re-encoded copies hidden among 20,000 training images.

    Fashion-MNIST's training set already holds near-identical photos of many test items (the same garment
    in another colour); flagging those is correct de-duplication, not a false alarm, so the distractors are
    drawn from training images that do not correlate >= 0.97 with a chosen test image at native resolution.
    Every flagged pair that is not a planted copy then counts against precision.
    """
    if locate_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed (run `vitlab download fashion_mnist`)")
    start = time.time()
    test, train = get_source("fashion_mnist", split="test"), get_source("fashion_mnist", split="train")
    rng = np.random.default_rng(0)
    queries = rng.choice(len(test), 200, replace=False)
    pool = rng.choice(len(train), 21000, replace=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        natural = _natural_duplicates(test.images[torch.as_tensor(queries)], train.images[torch.as_tensor(pool)], 0.97)
    finally:
        torch.set_num_threads(previous)
    distractors = pool[~natural][:19800]
    assert len(distractors) == 19800
    copies = [plant_copy(test.images[int(q)], rng) for q in queries]
    images = [train.images[int(i)] for i in distractors] + copies
    order = rng.permutation(len(images))
    corpus = ListSource([images[i] for i in order])
    planted = {int(np.nonzero(order == 19800 + k)[0][0]): int(q) for k, q in enumerate(queries)}

    result = find_near_duplicates(test, corpus, query_indices=queries)
    hits = {(m.query, m.corpus) for m in result.matches}
    true_pairs = {(q, c) for c, q in planted.items()}
    recall = len(hits & true_pairs) / len(true_pairs)
    precision = len(hits & true_pairs) / max(len(hits), 1)
    print(f"\nde-dup: recall {recall:.3f}, precision {precision:.3f}, {len(hits)} flagged, "
          f"{result.num_candidates} hash candidates, {result.num_coarse} after coarse check, "
          f"{int(natural.sum())} natural near-duplicates left out of the pool, {time.time() - start:.1f} s")
    assert recall >= 0.95 and precision >= 0.95
    assert set(result.excluded) >= set(planted)  # the exclusion list covers every copy found


def test_exclusions_round_trip_and_stream(tmp_path):
    source = get_source("synthetic", num_samples=64, num_classes=4, img_size=8, seed=0)
    queries = get_source("synthetic", split="test", num_samples=8, num_classes=4, img_size=8, seed=0)
    # plant exact copies of two test images at corpus positions 5 and 40
    images = source.images.clone()
    images[5], images[40] = queries.images[1], queries.images[6]
    corpus = ListSource(list(images))
    result = find_near_duplicates(queries, corpus)
    assert {(m.query, m.corpus) for m in result.matches} >= {(1, 5), (6, 40)}
    # an optional feature check: identical features keep the matches, orthogonal ones veto them
    agree = find_near_duplicates(queries, corpus, features=lambda image: torch.ones(4))
    assert {(m.query, m.corpus) for m in agree.matches} == {(m.query, m.corpus) for m in result.matches}
    assert all(m.cosine == 1.0 for m in agree.matches)
    flip = iter(range(10**6))
    veto = find_near_duplicates(queries, corpus, features=lambda image: torch.eye(2)[next(flip) % 2])
    assert veto.matches == []
    report, excl = write_report({"synthetic:test": result}, tmp_path, {"source": "synthetic"})
    assert load_exclusions(excl) == set(result.excluded)
    assert load_exclusions(report) == set(result.excluded)
    (tmp_path / "list.json").write_text(json.dumps({"excluded": [3, 1]}))
    assert load_exclusions(tmp_path / "list.json") == {1, 3}
    (tmp_path / "bad.txt").write_text("4\nfive\n")
    with pytest.raises(DataError, match="bad.txt:2"):
        load_exclusions(tmp_path / "bad.txt")
    keep = remaining_indices(len(source), load_exclusions(excl))
    assert 5 not in keep and 40 not in keep and len(keep) == 64 - len(result.excluded)
    stream = build_stream(source, batch_size=8, train=True, img_size=8, indices=keep)
    assert len(stream) == len(keep) // 8


def test_cli_dedup(tmp_path, capsys):
    out = tmp_path / "dedup"
    code = main(["dedup", "--source", "digits:train", "--against", "digits:test", "--out", str(out),
                 "--limit", "50"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["against"]["digits:test"]["num_queries"] == 50
    assert (out / "exclusions.txt").exists() and "excluded" in capsys.readouterr().out
    assert main(["dedup", "--source", "digits", "--source-opt", "colour", "--against", "digits",
                 "--out", str(out)]) == 2
