"""Which files `vitlab predict` reads: files, folders (recursively), glob patterns and manifests.

A manifest is a ``.txt`` (one path a line) or ``.csv`` (path in the first column; a header row whose first
cell is ``path`` / ``image`` / ``file`` is skipped); relative paths are relative to the manifest's folder.
A path that names nothing is not an error here: it comes back as unreadable, named, like a corrupt image.
"""
from __future__ import annotations

import csv
import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

from vitlab.data.images import IMAGE_EXTENSIONS

MANIFEST_SUFFIXES = (".txt", ".csv")
HEADER_CELLS = ("path", "image", "file", "filename")


def expand_inputs(items: Iterable[str | os.PathLike], *,
                  extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[list[str], list[tuple[str, str]]]:
    """``(image paths in order, [(item, reason) for items that name nothing readable])``; duplicates dropped."""
    paths: list[str] = []
    missing: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        if path not in seen:
            seen.add(path)
            paths.append(path)

    for item in map(str, items):
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))
            if not found:
                missing.append((item, "folder holds no image files"))
            for p in found:
                add(p)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            for p in read_manifest(path):
                add(p)
        elif path.is_file():
            add(str(path))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            files = [m for m in matches if os.path.isfile(m)]
            if not files:
                missing.append((item, "pattern matches no files"))
            for p in files:
                add(p)
        else:
            missing.append((item, "no such file or folder"))
    return paths, missing


def read_manifest(path: Path) -> list[str]:
    """The image paths a ``.txt`` / ``.csv`` manifest lists (blank lines and ``#`` comments skipped)."""
    base = path.parent
    rows: list[str] = []
    with open(path, newline="") as handle:
        if path.suffix.lower() == ".csv":
            for i, row in enumerate(csv.reader(handle)):
                if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                    continue
                if i == 0 and row[0].strip().lower() in HEADER_CELLS:
                    continue
                rows.append(row[0].strip())
        else:
            rows = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    return [str(p if (p := Path(r).expanduser()).is_absolute() else base / p) for r in rows]
