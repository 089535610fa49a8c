"""Every named source, loaded from fixtures the tests build in their official layouts."""
from __future__ import annotations

import gzip
import json
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import build_stream, get_source, list_sources
from vitlab.data.download import locate_fashion_mnist, read_idx
from vitlab.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _jpeg(path: Path, size=(24, 20), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


# ------------------------------------------------------------------------------------------------ Fashion-MNIST
@pytest.fixture(scope="module")
def fmnist_dir():
    found = locate_fashion_mnist()
    if found is None:
        pytest.skip("Fashion-MNIST is not installed (run `vitlab download fashion_mnist`)")
    return found


def test_fashion_mnist_counts_and_equality_with_the_idx_files(fmnist_dir):
    train = get_source("fashion_mnist", split="train")
    test = get_source("fashion_mnist", split="test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.all(np.bincount(train.labels.numpy()) == 6000)
    assert np.all(np.bincount(test.labels.numpy()) == 1000)
    assert train.classes[0] == "T-shirt/top" and train.num_classes == 10
    # equal to the IDX files, decoded independently here (magic 2051 images / 2049 labels, big-endian)
    raw = gzip.decompress((fmnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert int.from_bytes(raw[:4], "big") == 2051 and int.from_bytes(raw[4:8], "big") == 10000
    assert np.array_equal(np.frombuffer(raw[16:], np.uint8).reshape(10000, 28, 28), test.images[:, 0].numpy())
    raw = gzip.decompress((fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert int.from_bytes(raw[:4], "big") == 2049
    assert np.array_equal(np.frombuffer(raw[8:], np.uint8), test.labels.numpy())
    image, label = test[3]
    assert image.shape == (1, 28, 28) and isinstance(label, int)


def test_idx_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"\x00" * 5)
    with pytest.raises(DataError, match="x-idx3-ubyte"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(bad)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_names_and_option_errors():
    for name in ["fashion_mnist", "digits", "image_folder", "cifar10", "cifar100", "pets", "flowers102",
                 "shards", "synthetic"]:
        assert name in list_sources()
    with pytest.raises(ConfigError, match="unknown data source"):
        get_source("imagenet9000")
    with pytest.raises(ConfigError, match="unknown option"):
        get_source("synthetic", colour="blue")
    with pytest.raises(ConfigError, match="root"):
        get_source("cifar10")
    with pytest.raises(ConfigError, match="split"):
        get_source("digits", split="validation")


def test_synthetic_is_deterministic_and_learnable():
    a = get_source("synthetic", num_samples=200, num_classes=4, img_size=8, channels=3, seed=1)
    b = get_source("synthetic", num_samples=200, num_classes=4, img_size=8, channels=3, seed=1)
    test = get_source("synthetic", split="test", num_samples=200, num_classes=4, img_size=8, channels=3, seed=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, test.images)
    # nearest class mean from train classifies test well above chance (the task is learnable)
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(4)]).flatten(1)
    dist = torch.cdist(test.images.float().flatten(1), means)
    assert (dist.argmin(1) == test.labels).float().mean() > 0.9


# ------------------------------------------------------------------------------------------------ CIFAR
def _cifar_batch(n, labels_key, classes):
    return {b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
            labels_key: RNG.integers(0, classes, n).tolist()}


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(4, b"labels", 10)))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(3, b"labels", 10)))
    names = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck"]]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return root


def test_cifar10_folder_and_archive(cifar10_root, tmp_path):
    train = get_source("cifar10", split="train", root=cifar10_root)
    test = get_source("cifar10", split="test", root=cifar10_root)
    assert len(train) == 20 and len(test) == 3 and train.images.shape == (20, 3, 32, 32)
    first = pickle.loads((cifar10_root / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert np.array_equal(train.images[0].numpy().reshape(-1), first[b"data"][0])  # row-major RGB planes
    assert train.classes[3] == "cat"
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar10_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_tar = get_source("cifar10", split="train", root=archive)
    assert torch.equal(from_tar.images, train.images) and torch.equal(from_tar.labels, train.labels)
    with pytest.raises(DataError, match="no CIFAR data"):
        get_source("cifar10", root=tmp_path / "nothing")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_of_both_pickle_protocols_read(tmp_path, protocol):
    """The real batches are protocol-2 pickles of Python 2; re-pickled ones use protocol 5 buffers."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = _cifar_batch(3, b"labels", 10)
    batch[b"filenames"] = [b"a.png", b"b.png", b"c.png"]
    for name in ("test_batch", *[f"data_batch_{i}" for i in range(1, 6)]):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    test = get_source("cifar10", split="test", root=tmp_path)
    assert np.array_equal(test.images.numpy().reshape(3, -1), batch[b"data"])


def test_a_malicious_cifar_batch_runs_no_code(cifar10_root, tmp_path):
    """A pickle that calls os.system when unpickled is refused before the call (restricted unpickler)."""
    import os
    import shutil

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "root"
    shutil.copytree(cifar10_root, root)
    batch = _cifar_batch(3, b"labels", 10)
    batch[b"labels"] = Evil()
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR pickle batch.*refusing global (posix|os)\.system"):
        get_source("cifar10", split="test", root=root)
    assert not marker.exists()


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 6), ("test", 2)):
        batch = _cifar_batch(n, b"fine_labels", 100)
        batch[b"coarse_labels"] = RNG.integers(0, 20, n).tolist()
        (folder / split).write_bytes(pickle.dumps(batch))
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    fine = get_source("cifar100", root=tmp_path)
    coarse = get_source("cifar100", split="test", root=tmp_path, label_mode="coarse")
    assert fine.num_classes == 100 and len(fine) == 6 and coarse.num_classes == 20 and len(coarse) == 2


# ------------------------------------------------------------------------------------------------ Pets, Flowers
def test_pets_official_layout(tmp_path):
    lines = {"trainval.txt": ["Abyssinian_1 1 1 1", "Abyssinian_2 1 1 1", "beagle_1 2 2 1"],
             "test.txt": ["# comment", "Abyssinian_3 1 1 1", "beagle_2 2 2 1", "beagle_3 2 2 1"]}
    (tmp_path / "annotations").mkdir()
    for file, rows in lines.items():
        (tmp_path / "annotations" / file).write_text("\n".join(rows) + "\n")
        for row in rows:
            if not row.startswith("#"):
                _jpeg(tmp_path / "images" / f"{row.split()[0]}.jpg")
    train = get_source("pets", split="train", root=tmp_path)
    test = get_source("pets", split="test", root=tmp_path)
    assert len(train) == 3 and len(test) == 3 and train.classes == ["Abyssinian", "beagle"]
    assert train.labels.tolist() == [0, 0, 1] and test.labels.tolist() == [0, 1, 1]
    x, y = next(iter(build_stream(test, batch_size=3, train=False, img_size=16)))
    assert x.shape == (3, 3, 16, 16) and y.tolist() == [0, 1, 1]


def test_flowers102_official_layout(tmp_path):
    from scipy.io import savemat

    labels = np.array([[1, 2, 2, 1, 3, 3]])  # 1-based, per image_00001..6
    savemat(tmp_path / "imagelabels.mat", {"labels": labels})
    savemat(tmp_path / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3]]),
                                     "tstid": np.array([[4, 5, 6]])})
    for i in range(1, 7):
        _jpeg(tmp_path / "jpg" / f"image_{i:05d}.jpg", colour=(i * 30, 0, 0))
    train = get_source("flowers102", split="train", root=tmp_path)
    trainval = get_source("flowers102", split="trainval", root=tmp_path)
    test = get_source("flowers102", split="test", root=tmp_path)
    assert len(train) == 2 and len(trainval) == 3 and len(test) == 3
    assert test.labels.tolist() == [0, 2, 2] and train.num_classes == 3 and train.classes[0] == "flower_001"
    image, _ = test[0]
    assert image.shape == (3, 20, 24)


# ------------------------------------------------------------------------------------------------ image folders
def test_image_folder_classes_and_split_dirs(tmp_path):
    for split in ("train", "test"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(2):
                _jpeg(tmp_path / split / cls / f"{i}.jpg", colour=colour)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    train = get_source("image_folder", root=tmp_path)
    test = get_source("image_folder", split="test", root=tmp_path)
    assert train.classes == ["cat", "dog"] and len(train) == 4 and len(test) == 4
    image, label = train[3]
    assert image.shape == (3, 20, 24) and label == 1 and image[2].float().mean() > 200  # blue dog
    grey = get_source("image_folder", root=tmp_path / "train", channels=1)
    assert grey[0][0].shape == (1, 20, 24)


def test_manifest_names_labels_and_reports_bad_rows(tmp_path):
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "sub" / "b.jpg")
    good = tmp_path / "good.csv"
    good.write_text("path,label\na.jpg,1\nsub/b.jpg,0\n")
    source = get_source("image_folder", manifest=good)
    assert source.labels.tolist() == [1, 0] and source.classes == ["0", "1"]
    named = tmp_path / "named.csv"
    named.write_text("a.jpg,dog\nsub/b.jpg,cat\n")
    assert get_source("image_folder", manifest=named).classes == ["cat", "dog"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.jpg,1\nmissing.jpg,0\nsub/b.jpg,12\n")
    with pytest.raises(DataError, match=r"bad.csv:3: image file .*missing.jpg.* not found"):
        get_source("image_folder", manifest=bad, num_classes=10)
    with pytest.raises(DataError, match=r"bad2.csv:2: label 12 out of range 0..9"):
        (tmp_path / "bad2.csv").write_text("a.jpg,1\nsub/b.jpg,12\n")
        get_source("image_folder", manifest=tmp_path / "bad2.csv", num_classes=10)
    skipped = get_source("image_folder", manifest=bad, num_classes=10, on_bad_image="skip")
    assert len(skipped) == 1
    assert [p.rsplit("/", 1)[-1] for p, _ in skipped.bad_files] == ["bad.csv:3", "bad.csv:4"]


# ------------------------------------------------------------------------------------------------ shards
def _write_shard(path: Path, samples):
    with tarfile.open(path, "w") as tar:
        for key, colour, label in samples:
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), colour).save(buf, "PNG")
            for ext, data in (("png", buf.getvalue()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for s in range(4):
        _write_shard(root / f"train-{s:03d}.tar",
                     [(f"s{s}_{i}", (s * 60, i * 30, 0), (s * 6 + i) % 3) for i in range(6)])
    return root


def test_shards_indexed_keep_the_full_contract(shard_dir):
    source = get_source("shards", pattern=str(shard_dir / "train-{000..003}.tar"))
    assert not source.streaming and len(source) == 24 and source.num_classes == 3
    image, label = source[7]  # shard 1, sample 1
    assert image.shape == (3, 16, 16) and label == (6 + 1) % 3 and int(image[0, 0, 0]) == 60
    stream = build_stream(source, batch_size=8, train=True, img_size=8, augment="paper", seed=0)
    first = [next(iter(stream))[0] for _ in range(1)][0]
    again = build_stream(source, batch_size=8, train=True, img_size=8, augment="paper", seed=0)
    assert torch.equal(first, next(iter(again))[0])


def test_shards_streaming_split_by_rank_and_worker(shard_dir):
    pattern = str(shard_dir / "train-{000..003}.tar")
    # 4 shards of 6 over 2 ranks: 12 samples per rank and epoch. In-process: 3 batches of 4; with 2 workers
    # each worker reads one shard and drops its last 2 samples: 2 batches.
    for workers, per_epoch in ((0, 3), (2, 2)):
        seen = []
        for rank in range(2):
            source = get_source("shards", pattern=pattern, streaming=True, num_classes=3, num_samples=24)
            stream = build_stream(source, batch_size=4, train=True, img_size=8, seed=1, rank=rank, world_size=2,
                                  num_workers=workers)
            assert len(stream) == 3
            it = iter(stream)
            batches = [next(it) for _ in range(per_epoch)]
            state = stream.state_dict()
            assert (state["epoch"], state["batch"]) == (0, per_epoch)
            seen.append(torch.cat([x for x, _ in batches]))
            assert all(y.shape == (4,) for _, y in batches)
        # ranks read disjoint shards: the red channel (shard id * 60) never overlaps
        reds = [set(((x[:, 0, 0, 0] + 1) * 127.5).round().int().tolist()) for x in seen]
        assert len(reds[0]) == len(reds[1]) == 2 and not reds[0] & reds[1]
    # eval: one ordered pass over everything
    source = get_source("shards", pattern=pattern, streaming=True, num_classes=3)
    labels = torch.cat([y for _, y in build_stream(source, batch_size=5, train=False, img_size=8)])
    assert labels.tolist() == [(s * 6 + i) % 3 for s in range(4) for i in range(6)]


def test_streaming_resume(shard_dir):
    pattern = str(shard_dir / "train-{000..003}.tar")
    make = lambda: build_stream(get_source("shards", pattern=pattern, streaming=True, num_classes=3,
                                           num_samples=24, shuffle_buffer=5),
                                batch_size=4, train=True, img_size=8, augment="paper", seed=3, prefetch=0)
    full = make()
    it = iter(full)
    expected = [next(it) for _ in range(9)]
    part = make()
    it = iter(part)
    for _ in range(7):
        next(it)
    state = part.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    it = iter(resumed)
    for want in expected[7:]:
        got = next(it)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_pipe_shards_need_an_explicit_opt_in(shard_dir):
    url = f"pipe:cat {shard_dir / 'train-000.tar'}"
    with pytest.raises(ConfigError, match="allow_pipe=true"):
        get_source("shards", urls=[url], num_classes=3)
    source = get_source("shards", urls=[url], num_classes=3, allow_pipe=True)
    labels = torch.cat([y for _, y in build_stream(source, batch_size=4, train=False, img_size=8)])
    assert labels.tolist() == [i % 3 for i in range(6)]


def test_shard_lists_from_a_directory_a_glob_or_braces(shard_dir):
    names = [f"train-{s:03d}.tar" for s in range(4)]
    for spec in ({"urls": [str(shard_dir)]}, {"pattern": str(shard_dir / "train-*.tar")},
                 {"pattern": str(shard_dir / "train-{000..003}.tar")}):
        assert [u.rsplit("/", 1)[-1] for u in get_source("shards", **spec).urls] == names


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory):
    """5 shards of 2 to 10 samples: 2 ranks get 3 and 2 shards, and readers run dry at different points."""
    root = tmp_path_factory.mktemp("uneven")
    for s, n in enumerate((6, 2, 10, 4, 8)):
        _write_shard(root / f"u-{s}.tar", [(f"u{s}_{i}", (s * 50, i * 20, 0), (s + i) % 3) for i in range(n)])
    return root


@pytest.mark.parametrize("rank, workers", [(0, 0), (1, 0), (0, 2)])
def test_streaming_resume_is_exact_wherever_the_readers_are(uneven_shards, rank, workers):
    make = lambda: build_stream(get_source("shards", urls=[str(uneven_shards)], streaming=True, num_classes=3,
                                           num_samples=30, shuffle_buffer=3),
                                batch_size=2, train=True, img_size=8, augment="paper", seed=5, rank=rank,
                                world_size=2 if workers == 0 else 1, num_workers=workers)
    it = iter(make())
    expected = [next(it) for _ in range(24)]  # several epochs: some readers are epochs ahead of others
    for stop in (5, 11, 17):
        part = make()
        it = iter(part)
        for _ in range(stop):
            next(it)
        state = part.state_dict()
        resumed = make()
        resumed.load_state_dict(state)
        it = iter(resumed)
        for want in expected[stop:stop + 5]:
            got = next(it)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if workers:
        readers = state["readers"]
        assert len(readers) == 2 and readers[0][0] != readers[1][0]  # the readers are in different epochs


def test_shards_write_from_an_image_folder_reads_back_the_same_samples(tmp_path, capsys):
    from vitlab.cli import main

    root = tmp_path / "folder"
    for i in range(7):
        (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(root / f"c{i % 3}" / f"{i}.png")
    out = tmp_path / "shards"
    cmd = ["shards", "write", "--source", "image_folder", "--source-opt", f"root={root}", "--out", str(out),
           "--per-shard", "3"]
    assert main(cmd) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    folder = get_source("image_folder", root=root)
    shards = get_source("shards", urls=[str(out)], classes=json.loads((out / "classes.json").read_text()))
    assert shards.classes == folder.classes == ["c0", "c1", "c2"]
    pairs = lambda s: sorted((int(s[i][0][0, 0, 0]), s[i][1]) for i in range(len(s)))
    assert pairs(shards) == pairs(folder)  # every sample once, its bytes and label unchanged
    capsys.readouterr()
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "already holds" in err and len(err.splitlines()) == 1
