"""Sources read from image files: class folders, CSV manifests, Oxford-IIIT Pets and Flowers-102.

Listing problems (an empty class folder, a manifest row pointing nowhere, a label out of range) are found
when the source is built, and named by file and line. Image problems (corrupt, truncated, too large) are
found either up front (``verify="header"``, the default, opens every file; ``verify="full"`` decodes
every file) or when the sample is first read. With ``on_bad_image="skip"`` all of these are left out
and listed in ``source.bad_files`` as ``(path, reason)``, instead of stopping the run.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vitlab.data.base import FileSource
from vitlab.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from vitlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class ImageFolderSource(FileSource):
    """``root/<class>/<image>`` (classes sorted by name) or a CSV manifest of ``path,label`` rows."""

    def __init__(self, split: str = "train", *, root: str | os.PathLike | None = None,
                 manifest: str | os.PathLike | None = None, classes: Sequence[str] | None = None,
                 num_classes: int | None = None, channels: int = 3, on_bad_image: str = "error",
                 verify: str = "header", max_pixels: int = DEFAULT_MAX_PIXELS, background: int = 255,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        if (root is None) == (manifest is None):
            raise ConfigError("image_folder: give exactly one of root=<folder> or manifest=<file.csv>")
        where = Path(root or manifest).expanduser()
        super().__init__(name=f"image_folder:{where}", channels=channels, on_bad_image=on_bad_image,
                         max_pixels=max_pixels, background=background)
        self.extensions = tuple(e.lower() for e in extensions)
        if root is not None:
            self._scan_folder(_split_dir(where, split), classes)
        else:
            self._read_manifest(where, classes, num_classes)
        self.verify(verify)

    def _skip_or_raise(self, path: str, reason: str) -> None:
        if self.on_bad_image == "error":
            raise DataError(f"{path}: {reason}")
        self.bad_files.append((path, reason))
        log.warning("skipping %s: %s", path, reason)

    def _scan_folder(self, root: Path, classes: Sequence[str] | None) -> None:
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a folder")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is not None:
            missing = [c for c in classes if c not in found]
            if missing:
                raise DataError(f"{root}: class folder(s) {missing} not found (have {found})")
            found = list(classes)
        if not found:
            raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<image files>)")
        paths, labels = [], []
        for label, name in enumerate(found):
            files = sorted(str(p) for p in (root / name).rglob("*")
                           if p.suffix.lower() in self.extensions and p.is_file() and not p.name.startswith("."))
            if not files:
                self._skip_or_raise(str(root / name), f"class folder '{name}' holds no image files "
                                                      f"({', '.join(self.extensions)})")
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise DataError(f"{root}: no image files in any class folder")
        self.classes = list(found)
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def _read_manifest(self, manifest: Path, classes: Sequence[str] | None, num_classes: int | None) -> None:
        if not manifest.is_file():
            raise DataError(f"manifest {manifest} does not exist")
        base = manifest.parent
        try:
            with open(manifest, newline="", encoding="utf-8") as handle:
                rows = list(enumerate(csv.reader(handle), start=1))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise DataError(f"{manifest}: cannot read as CSV ({error})") from None
        rows = [(n, r) for n, r in rows if r and not (len(r) == 1 and not r[0].strip())
                and not r[0].lstrip().startswith("#")]
        if rows and [c.strip().lower() for c in rows[0][1][:2]] == ["path", "label"]:
            rows = rows[1:]
        if not rows:
            raise DataError(f"{manifest}: no rows (expected 'path,label' lines)")
        raw_labels = [r[1].strip() if len(r) >= 2 else "" for _, r in rows]
        numeric = all(_is_int(v) for v in raw_labels if v)
        if classes is not None:
            class_list = list(classes)
        elif numeric:
            top = num_classes if num_classes is not None else max(int(v) for v in raw_labels if v) + 1
            class_list = [str(k) for k in range(top)]
        else:
            class_list = sorted({v for v in raw_labels if v and not _is_int(v)})
        if num_classes is not None and num_classes != len(class_list):
            raise ConfigError(f"{manifest}: num_classes={num_classes} but {len(class_list)} class names given")
        index = {name: k for k, name in enumerate(class_list)}
        paths, labels = [], []
        for (line, row), value in zip(rows, raw_labels):
            where = f"{manifest}:{line}"
            if len(row) < 2 or not row[0].strip() or not value:
                self._skip_or_raise(where, f"expected 'path,label', got {','.join(row)!r}")
                continue
            path = Path(row[0].strip()).expanduser()
            path = path if path.is_absolute() else base / path
            if value in index:
                label = index[value]
            elif _is_int(value):
                label = int(value)
                if not 0 <= label < len(class_list):
                    self._skip_or_raise(where, f"label {label} out of range 0..{len(class_list) - 1}")
                    continue
            else:
                self._skip_or_raise(where, f"label {value!r} is not one of the classes {class_list}")
                continue
            if not path.is_file():
                self._skip_or_raise(where, f"image file {str(path)!r} not found")
                continue
            paths.append(str(path))
            labels.append(label)
        if not paths:
            raise DataError(f"{manifest}: no usable rows")
        self.classes = class_list
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.int64)


def _is_int(value: str) -> bool:
    try:
        int(value)
        return True
    except ValueError:
        return False


def _split_dir(root: Path, split: str) -> Path:
    """``root/<split>`` when the folder is split into train/test (or val) sub-folders, else ``root``."""
    subs = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    if "train" in subs and subs & {"test", "val", "validation"}:
        if split not in subs:
            raise ConfigError(f"{root} is split into {sorted(subs)}; split={split!r} is not one of them")
        return root / split
    return root


def image_folder(split: str = "train", *, root=None, manifest=None, classes=None, num_classes=None, channels=3,
                 on_bad_image="error", verify="header", max_pixels=DEFAULT_MAX_PIXELS, background=255,
                 extensions=IMAGE_EXTENSIONS) -> ImageFolderSource:
    """A folder of class sub-folders (``root=``) or a CSV manifest (``manifest=``); see the module doc."""
    return ImageFolderSource(split, root=root, manifest=manifest, classes=classes, num_classes=num_classes,
                             channels=channels, on_bad_image=on_bad_image, verify=verify, max_pixels=max_pixels,
                             background=background, extensions=extensions)


class ListSource(FileSource):
    """Files with labels given as lists (the benchmark sets below build one)."""

    def __init__(self, name: str, paths: list[str], labels: list[int], classes: list[str], *, channels: int,
                 on_bad_image: str, verify: str, max_pixels: int, background: int):
        super().__init__(name=name, channels=channels, on_bad_image=on_bad_image, max_pixels=max_pixels,
                         background=background)
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = classes
        missing = [p for p in paths if not os.path.isfile(p)]
        for path in missing:
            if on_bad_image == "error":
                raise DataError(f"{path}: listed in the split file but not found")
            self.bad_files.append((path, "listed in the split file but not found"))
        if missing:
            keep = [i for i, p in enumerate(paths) if p not in set(missing)]
            self.paths = [paths[i] for i in keep]
            self.labels = self.labels[torch.as_tensor(keep, dtype=torch.int64)]
        self.verify(verify)


def pets(split: str = "train", *, root: str | os.PathLike, channels: int = 3, on_bad_image: str = "error",
         verify: str = "none", max_pixels: int = DEFAULT_MAX_PIXELS) -> ListSource:
    """Oxford-IIIT Pets (37 breeds): ``root/images/*.jpg`` and ``root/annotations/{trainval,test}.txt``.

    Split files list ``<image name> <class id 1..37> <species> <breed id>``; ``train`` (= ``trainval``) has
    3,680 images, ``test`` 3,669. Class names come from the image names (``Abyssinian_100`` -> Abyssinian).
    """
    splits = {"train": "trainval.txt", "trainval": "trainval.txt", "test": "test.txt"}
    if split not in splits:
        raise ConfigError(f"pets: split={split!r}; expected one of {sorted(splits)}")
    root = Path(root).expanduser()
    annotations, images = root / "annotations", root / "images"
    if not annotations.is_dir() or not images.is_dir():
        raise DataError(f"{root}: expected Oxford-IIIT Pets' images/ and annotations/ folders (unpack "
                        "images.tar.gz and annotations.tar.gz there)")
    names: dict[int, str] = {}
    chosen: list[tuple[str, int]] = []
    for file_name in ("trainval.txt", "test.txt"):
        path = annotations / file_name
        if not path.is_file():
            if file_name == splits[split]:
                raise DataError(f"{path} not found")
            continue
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) < 1:
                raise DataError(f"{path}:{line_no}: expected '<image> <class id 1..37> ...', got {line!r}")
            class_id = int(parts[1]) - 1
            names.setdefault(class_id, parts[0].rsplit("_", 1)[0])
            if file_name == splits[split]:
                chosen.append((parts[0], class_id))
    classes = [names.get(k, f"class_{k}") for k in range(max(names) + 1)]
    paths = [str(images / f"{name}.jpg") for name, _ in chosen]
    return ListSource(f"pets:{split}", paths, [c for _, c in chosen], classes, channels=channels,
                      on_bad_image=on_bad_image, verify=verify, max_pixels=max_pixels, background=255)


def flowers102(split: str = "train", *, root: str | os.PathLike, channels: int = 3, on_bad_image: str = "error",
               verify: str = "none", max_pixels: int = DEFAULT_MAX_PIXELS,
               class_names: Sequence[str] | None = None) -> ListSource:
    """Oxford Flowers-102: ``root/jpg/image_00001.jpg``.., ``imagelabels.mat``, ``setid.mat``.

    Splits from ``setid.mat``: ``train`` (trnid, 1,020), ``val`` (valid, 1,020), ``trainval`` (both) and
    ``test`` (tstid, 6,149). The archive carries no class names, so classes are ``flower_001`` ..
    ``flower_102`` unless ``class_names`` is given.
    """
    # Lazy: scipy (always installed with scikit-learn) takes most of a second to import; only Flowers-102 needs it.
    from scipy.io import loadmat

    keys = {"train": ("trnid",), "val": ("valid",), "validation": ("valid",), "trainval": ("trnid", "valid"),
            "test": ("tstid",)}
    if split not in keys:
        raise ConfigError(f"flowers102: split={split!r}; expected one of {sorted(keys)}")
    root = Path(root).expanduser()
    label_file, setid_file, jpg = root / "imagelabels.mat", root / "setid.mat", root / "jpg"
    for needed in (label_file, setid_file, jpg):
        if not needed.exists():
            raise DataError(f"{needed} not found (Flowers-102 layout: jpg/ from 102flowers.tgz, "
                            "imagelabels.mat, setid.mat)")
    try:
        labels_all = np.asarray(loadmat(label_file)["labels"]).reshape(-1).astype(np.int64) - 1
        setid = loadmat(setid_file)
        ids = np.concatenate([np.asarray(setid[k]).reshape(-1) for k in keys[split]]).astype(np.int64)
    except (KeyError, ValueError, OSError) as error:
        raise DataError(f"{root}: cannot read imagelabels.mat / setid.mat ({error})") from None
    ids = np.sort(ids)
    if ids.min() < 1 or ids.max() > len(labels_all):
        raise DataError(f"{setid_file}: image ids {ids.min()}..{ids.max()} outside 1..{len(labels_all)}")
    num_classes = int(labels_all.max()) + 1
    classes = list(class_names) if class_names is not None else [f"flower_{k + 1:03d}" for k in range(num_classes)]
    if len(classes) < num_classes:
        raise ConfigError(f"flowers102: {len(classes)} class_names for {num_classes} classes")
    paths = [str(jpg / f"image_{i:05d}.jpg") for i in ids]
    return ListSource(f"flowers102:{split}", paths, labels_all[ids - 1].tolist(), classes, channels=channels,
                      on_bad_image=on_bad_image, verify=verify, max_pixels=max_pixels, background=255)
