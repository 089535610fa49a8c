"""The built-in data sources, registered by name for ``get_source(name, split="train", **options)``.

==============  ==========================================================================================
name            what it reads
==============  ==========================================================================================
fashion_mnist   Zalando's IDX files (found or downloaded, see :mod:`vitlab.data.download`); 1x28x28, 10 classes
digits          scikit-learn's 8x8 digits (0..16 scaled to 0..255); a fixed stratified 1,297/500 split
image_folder    ``root=`` one sub-folder per class, or ``manifest=`` a CSV of ``path,label``
cifar10/100     the python pickle batches (``root=`` folder or the ``.tar.gz``)
pets            Oxford-IIIT Pets (``root=`` with ``images/`` and ``annotations/``)
flowers102      Oxford Flowers-102 (``root=`` with ``jpg/``, ``imagelabels.mat``, ``setid.mat``)
shards          WebDataset-style tar shards (``urls=`` list or ``pattern=`` with ``{000..099}``)
synthetic       learnable class patterns plus noise, deterministic from ``seed``
==============  ==========================================================================================
"""
from __future__ import annotations

import functools
import io
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from vitlab.data.base import TensorSource
from vitlab.data.download import FASHION_MNIST_SPLITS, ensure_fashion_mnist, find_file, read_idx
from vitlab.data.folders import flowers102, image_folder, pets
from vitlab.data.registry import register
from vitlab.data.shards import shards
from vitlab.data.splits import stratified_split
from vitlab.data.sprites import SPRITE_FACTORIES
from vitlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# sklearn ships one set of 1,797 digits; we hold out a fixed stratified 500 as "test".
DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ConfigError(f"{name}: split={split!r}; expected one of {list(allowed)}")


# ---------------------------------------------------------------------------------------------------------
# In-memory sources
# ---------------------------------------------------------------------------------------------------------
def fashion_mnist(split: str = "train", *, root: str | os.PathLike | None = None, download: bool = True) -> TensorSource:
    """Fashion-MNIST: 60,000 train / 10,000 test grey 28x28 images of 10 clothing classes."""
    _check_split("fashion_mnist", split, tuple(FASHION_MNIST_SPLITS))
    directory = ensure_fashion_mnist(root, download=download)
    image_stem, label_stem = FASHION_MNIST_SPLITS[split]
    image_path, label_path = find_file(directory, image_stem), find_file(directory, label_stem)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{image_path}: expected images [N, 28, 28] and labels [N], got {images.shape} and "
                        f"{labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{label_path}: label {int(labels.max())} out of range 0..9")
    log.debug("Fashion-MNIST %s from %s", split, directory)
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 1, 28, 28]
    return TensorSource(tensor, labels.astype(np.int64), FASHION_MNIST_CLASSES, name=f"fashion_mnist:{split}")


def digits(split: str = "train") -> TensorSource:
    """scikit-learn's 8x8 digits: values 0..16 scaled to 0..255, 1 channel, 10 classes.

    sklearn has no train/test split, so ``train``/``test`` are a stratified 1,297/500 split made with
    :func:`vitlab.data.splits.stratified_split` and seed 0: the same on every machine and run.
    ``split="all"`` gives all 1,797.
    """
    _check_split("digits", split, ("train", "test", "all"))
    images, labels = _digits_arrays()
    images, labels = images.copy(), labels.copy()
    if split != "all":
        train_idx, test_idx = stratified_split(labels, DIGITS_TEST_SIZE, seed=DIGITS_SPLIT_SEED)
        keep = train_idx if split == "train" else test_idx
        images, labels = images[keep], labels[keep]
    tensor = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    return TensorSource(tensor, labels, [str(d) for d in range(10)], name=f"digits:{split}")


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn parses its CSV on every call (about a second); the 115 kB result is kept per process."""
    from sklearn.datasets import load_digits  # lazy: importing sklearn takes about a second, only digits needs it

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [1797, 8, 8]
    return images, bunch.target.astype(np.int64)


def synthetic(split: str = "train", *, num_samples: int = 1024, num_classes: int = 10, img_size: int = 32,
              channels: int = 3, seed: int = 0, noise: float = 48.0) -> TensorSource:
    """Learnable synthetic images: each class is a fixed smooth random pattern; samples add noise.

    The class patterns depend only on ``seed`` (shared by all splits); the samples on (seed, split), so
    train and test are different draws of the same task. A small model separates the classes within a few
    hundred steps, which is what tests and benchmarks need.
    """
    if num_samples <= 0 or num_classes <= 0 or img_size <= 0 or channels not in (1, 3):
        raise ConfigError(f"synthetic: need num_samples, num_classes, img_size > 0 and channels 1 or 3, got "
                          f"{num_samples}, {num_classes}, {img_size}, {channels}")
    gen = torch.Generator().manual_seed(int(seed))
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    patterns = torch.nn.functional.interpolate(coarse, size=(img_size, img_size), mode="bicubic",
                                               align_corners=False).clamp(0, 1) * 160 + 48  # [K, C, S, S]
    split_key = {"train": 1, "test": 2, "val": 3}.get(split)
    if split_key is None:
        raise ConfigError(f"synthetic: split={split!r}; expected 'train', 'val' or 'test'")
    sample_gen = torch.Generator().manual_seed(int(seed) * 7919 + split_key)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=sample_gen)]
    gain = 0.8 + 0.4 * torch.rand(num_samples, 1, 1, 1, generator=sample_gen)
    pixels = patterns[labels] * gain + noise * torch.randn(num_samples, channels, img_size, img_size,
                                                            generator=sample_gen)
    images = pixels.round().clamp(0, 255).to(torch.uint8)
    return TensorSource(images, labels, [f"class_{k}" for k in range(num_classes)], name=f"synthetic:{split}")


def _cifar_open(root: Path, folder: str, archive: str):
    """Yield a function reading one member (by base name) from the extracted folder or the .tar.gz."""
    candidates = [root / folder, root]
    for directory in candidates:
        if directory.is_dir() and any((directory / m).is_file() for m in ("test_batch", "test")):
            return lambda member: _unpickle((directory / member).read_bytes(), directory / member)
    for tar_path in (root / archive, root) if root.suffix != ".gz" else (root,):
        if tar_path.is_file():
            tar = tarfile.open(tar_path, "r:gz")
            names = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

            def read(member: str, tar=tar, names=names, tar_path=tar_path):
                if member not in names:
                    raise DataError(f"{tar_path}: has no member {member!r}")
                return _unpickle(tar.extractfile(names[member]).read(), f"{tar_path}:{member}")
            return read
    raise DataError(f"no CIFAR data under {root}: expected {folder}/ (the extracted archive) or {archive}")


# The only globals a CIFAR batch needs: numpy's array and dtype reconstructors (numpy 1.x and 2.x spellings, pickle
# protocols 2 and 5). Anything else (os.system, builtins.eval, ...) is refused before it can run.
_CIFAR_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"),
     ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
     ("_codecs", "encode")}  # how Python 3 writes bytes in protocol 2: encode(str, "latin1"), no side effects


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles data only: a batch whose pickle names any other global is rejected (it would run code)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} (a CIFAR batch holds only arrays)")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where) -> dict:
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:
        raise DataError(f"{where}: not a CIFAR pickle batch ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: not a CIFAR pickle batch (holds a {type(batch).__name__}, not a dict)")
    return batch


def _cifar_arrays(batch: dict, label_key: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in batch or label_key not in batch:
        raise DataError(f"{where}: missing 'data' or {label_key.decode()!r} in the pickle batch")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{where}: data has shape {data.shape}, expected [N, 3072]")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch[label_key], dtype=np.int64)


def cifar10(split: str = "train", *, root: str | os.PathLike) -> TensorSource:
    """CIFAR-10 from its python batches: train = data_batch_1..5 (50,000), test = test_batch (10,000)."""
    _check_split("cifar10", split, ("train", "test"))
    read = _cifar_open(Path(root).expanduser(), "cifar-10-batches-py", "cifar-10-python.tar.gz")
    members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_cifar_arrays(read(m), b"labels", m) for m in members]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    try:
        classes = [n.decode() for n in read("batches.meta")[b"label_names"]]
    except (DataError, KeyError, OSError):
        classes = CIFAR10_CLASSES
    return TensorSource(torch.from_numpy(images), labels, classes, name=f"cifar10:{split}")


def cifar100(split: str = "train", *, root: str | os.PathLike, label_mode: str = "fine") -> TensorSource:
    """CIFAR-100 from its python files ``train``/``test``; ``label_mode`` fine (100) or coarse (20)."""
    _check_split("cifar100", split, ("train", "test"))
    if label_mode not in ("fine", "coarse"):
        raise ConfigError(f"cifar100: label_mode={label_mode!r}; expected 'fine' or 'coarse'")
    read = _cifar_open(Path(root).expanduser(), "cifar-100-python", "cifar-100-python.tar.gz")
    images, labels = _cifar_arrays(read(split), f"{label_mode}_labels".encode(), split)
    meta = read("meta")
    key = f"{label_mode}_label_names".encode()
    if key not in meta:
        raise DataError(f"cifar100 meta: missing {key.decode()!r}")
    classes = [n.decode() for n in meta[key]]
    return TensorSource(torch.from_numpy(images), labels, classes, name=f"cifar100:{split}")


# ---------------------------------------------------------------------------------------------------------
# Registration (vitlab.data.registry holds the table; vitlab.data.subset registers its wrapper itself)
# ---------------------------------------------------------------------------------------------------------
for _name, _factory in {
    "fashion_mnist": fashion_mnist, "digits": digits, "cifar10": cifar10, "cifar100": cifar100,
    "synthetic": synthetic, "image_folder": image_folder, "pets": pets, "flowers102": flowers102,
    "shards": shards, **SPRITE_FACTORIES,
}.items():
    register(_name, _factory)
