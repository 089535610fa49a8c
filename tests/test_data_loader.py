"""The batch-stream contract the training engine relies on (see vitlab.data.loader)."""
from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from vitlab.data import build_stream, get_source
from vitlab.data.stream import Stream
from vitlab.data.transforms import AUGMENT_LEVELS
from vitlab.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def source():
    return get_source("synthetic", num_samples=96, num_classes=4, img_size=12, channels=1, seed=3)


def take(stream, n):
    return list(itertools.islice(iter(stream), n))


def test_shapes_range_and_length(source):
    stream = build_stream(source, batch_size=16, train=True, img_size=16, in_chans=3)
    assert len(stream) == 96 // 16 and stream.batch_size == 16 and stream.num_classes == 4
    x, y = take(stream, 1)[0]
    assert x.shape == (16, 3, 16, 16) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert torch.equal(x[:, 0], x[:, 1])  # grey repeated to 3 channels


def test_train_epoch_is_a_permutation_with_drop_last(source):
    # 96 samples, batch 20: 4 batches per epoch, 16 samples dropped; labels identify samples via eval order
    stream = build_stream(source, batch_size=20, train=True, img_size=12, augment="none", seed=1)
    assert len(stream) == 4
    images = source.images.float() / 127.5 - 1
    seen = []
    for x, _ in take(stream, 4):
        for row in x:
            match = torch.nonzero((images - row).abs().flatten(1).amax(1) < 1e-5).flatten()
            seen.append(int(match[0]))
    assert len(set(seen)) == 80  # no repeats within an epoch
    assert stream.state_dict() == {"epoch": 1, "batch": 0}


def test_eval_single_ordered_pass_no_drop_last(source):
    stream = build_stream(source, batch_size=40, train=False, img_size=12, augment="paper", rank=1, world_size=2)
    batches = list(stream)
    assert [len(y) for _, y in batches] == [40, 40, 16] and len(stream) == 3
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, source.labels)
    x = torch.cat([b[0] for b in batches])
    assert torch.allclose(x, source.images.float() / 127.5 - 1, atol=1e-6)  # no augmentation in evaluation


def test_deterministic_and_independent_of_creation_time(source):
    a = take(build_stream(source, batch_size=8, train=True, img_size=16, augment="medium2", seed=5), 5)
    torch.manual_seed(123)
    np.random.seed(7)
    b = take(build_stream(source, batch_size=8, train=True, img_size=16, augment="medium2", seed=5), 5)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = take(build_stream(source, batch_size=8, train=True, img_size=16, augment="medium2", seed=6), 1)
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize("augment", ["paper", "strong1"])
def test_resume_gives_the_same_next_batches(source, augment):
    full = take(build_stream(source, batch_size=16, train=True, img_size=16, augment=augment, seed=2), 9)
    first = build_stream(source, batch_size=16, train=True, img_size=16, augment=augment, seed=2)
    take(first, 7)  # crosses the epoch boundary (6 batches per epoch)
    state = first.state_dict()
    assert state == {"epoch": 1, "batch": 1}
    resumed = build_stream(source, batch_size=16, train=True, img_size=16, augment=augment, seed=2)
    resumed.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(full[7:], take(resumed, 2)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_two_ranks_see_the_same_global_batch_as_one(source):
    one = take(build_stream(source, batch_size=16, train=True, img_size=16, augment="paper", seed=4), 3)
    ranks = [take(build_stream(source, batch_size=8, train=True, img_size=16, augment="paper", seed=4, rank=r,
                               world_size=2), 3) for r in range(2)]
    for step in range(3):
        x = torch.cat([ranks[0][step][0], ranks[1][step][0]])
        y = torch.cat([ranks[0][step][1], ranks[1][step][1]])
        assert torch.equal(x, one[step][0]) and torch.equal(y, one[step][1])


def test_workers_and_inline_agree(source):
    args = dict(batch_size=16, train=True, img_size=16, augment="deit", seed=8)
    inline = take(build_stream(source, **args), 3)
    workers = take(build_stream(source, num_workers=2, **args), 3)
    for (x0, y0), (x1, y1) in zip(inline, workers):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_both_kinds_of_stream_follow_the_protocol(source, tmp_path):
    assert isinstance(build_stream(source, batch_size=8, train=True, img_size=16), Stream)
    evaluation = build_stream(source, batch_size=40, train=False, img_size=16, num_workers=2)
    assert isinstance(evaluation, Stream)
    first = [y for _, y in evaluation]
    workers = evaluation._loader._iterator._workers  # persistent: the second pass reuses the processes
    second = [y for _, y in evaluation]
    assert evaluation._loader._iterator._workers == workers
    assert [len(y) for y in first] == [40, 40, 16] and all(torch.equal(a, b) for a, b in zip(first, second))


def test_indices_restrict_the_stream(source):
    subset = np.arange(0, 96, 3)  # 32 samples, all of class pattern i % ...
    stream = build_stream(source, batch_size=8, train=True, img_size=12, indices=subset, seed=0)
    assert len(stream) == 4
    allowed = source.images[torch.as_tensor(subset)].float() / 127.5 - 1
    for x, y in take(stream, 4):
        for row, label in zip(x, y):
            hit = torch.nonzero((allowed - row).abs().flatten(1).amax(1) < 1e-5).flatten()
            assert len(hit) >= 1 and int(source.labels[subset[int(hit[0])]]) == int(label)
    with pytest.raises(DataError):
        build_stream(source, batch_size=8, train=True, img_size=12, indices=[0, 500])


def test_mixup_levels_give_soft_targets(source):
    stream = build_stream(source, batch_size=16, train=True, img_size=16, augment="strong2", seed=1)
    x, y = take(stream, 1)[0]
    assert stream.soft_targets and y.shape == (16, 4) and y.dtype == torch.float32
    assert torch.allclose(y.sum(1), torch.ones(16))
    _, y_eval = next(iter(build_stream(source, batch_size=16, train=False, img_size=16, augment="strong2")))
    assert y_eval.dtype == torch.int64


@pytest.mark.parametrize("augment", sorted(AUGMENT_LEVELS))
def test_every_level_runs_and_changes_images_only_in_training(source, augment):
    x, _ = take(build_stream(source, batch_size=16, train=True, img_size=20, augment=augment, seed=0), 1)[0]
    assert x.shape == (16, 1, 20, 20) and torch.isfinite(x).all()


def test_bad_arguments(source):
    with pytest.raises(ConfigError):
        build_stream(source, batch_size=8, train=True, img_size=16, augment="extreme")
    with pytest.raises(DataError):
        build_stream(source, batch_size=100, train=True, img_size=16)
    with pytest.raises(ConfigError):
        build_stream(source, batch_size=8, train=True, img_size=16, rank=2, world_size=2)
    stream = build_stream(source, batch_size=8, train=True, img_size=16)
    with pytest.raises(ConfigError):
        stream.load_state_dict({"epoch": 0})


def test_rgb_to_grey_and_rectangular_size():
    rgb = get_source("synthetic", num_samples=8, num_classes=2, img_size=10, channels=3, seed=0)
    x, _ = next(iter(build_stream(rgb, batch_size=8, train=False, img_size=(12, 16), in_chans=1)))
    assert x.shape == (8, 1, 12, 16)


def test_exit_with_a_worker_stream_mid_way_is_clean(tmp_path):
    # Leaving while worker processes are making batches must neither hang nor abort the interpreter.
    script = tmp_path / "leave.py"
    script.write_text(
        "from vitlab.data import build_stream, get_source\n"
        "source = get_source('synthetic', num_samples=512, num_classes=4, img_size=28, channels=1, seed=0)\n"
        "batches = iter(build_stream(source, batch_size=64, train=True, img_size=30, augment='light2', seed=0,\n"
        "                             num_workers=2))\n"
        "for _ in range(5):\n"
        "    next(batches)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]


def _folder_with_bad_test_images(root):
    """A test split of 10 readable images (each its own grey level) and 3 whose data is cut short."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(10):
        (root / "test" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 20 * i + 5).save(root / "test" / f"c{i % 2}" / f"{i}.png")
    for i in range(3):
        path = root / "test" / f"c{i % 2}" / f"bad{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])  # the header reads, the pixels do not
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_scores_each_readable_image_once(tmp_path, workers):
    source = get_source("image_folder", split="test", root=_folder_with_bad_test_images(tmp_path), channels=1,
                        on_bad_image="skip")
    assert len(source) == 13  # the header check passes the cut files: they fail only when decoded
    stream = build_stream(source, batch_size=4, train=False, img_size=8, num_workers=workers)
    images = torch.cat([x for x, _ in stream])
    levels = sorted(((images[:, 0, 0, 0] + 1) * 127.5).round().int().tolist())
    assert levels == [20 * i + 5 for i in range(10)]  # every readable image once, no stand-ins
    assert stream.dropped == 3 and len(source.bad_files) == 3
    again = torch.cat([x for x, _ in stream])  # a second pass: the known bad files are left out again
    assert torch.equal(again, images) and stream.dropped == 3
