"""The output folder of a command: checked before any work starts, and left as it was when the start fails.

A command that fails on bad input (a :class:`~vitlab.errors.VitlabError`) or on the file system (``OSError``)
must not leave a half-made run directory behind: a ``config.yaml`` and an empty ``sweep/lr=.../`` would make the
corrected command on the same ``--out`` fail ("already holds a sweep"). :class:`OutputGuard` therefore

1. creates the folder up front, so an ``--out`` that cannot exist (``/dev/null/x/run``) fails in a second, not
   after a whole evaluation, and
2. on such a failure removes every file and folder the command created, unless the command had got as far as
   writing weights (a checkpoint or a ``.safetensors``): those are results worth keeping and ``--resume`` reads them.

Files that were there before are never touched. Only the writing process (rank 0 under torchrun) cleans up.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType

from vitlab.errors import ConfigError, VitlabError

KEEP_SUFFIXES = (".safetensors",)  # results that make a failed run worth keeping
KEEP_DIRS = ("checkpoints",)


MAX_LISTED = 200_000  # an --out this big is not a run directory: leave it alone rather than walk it twice


def _listing(root: Path) -> set[Path] | None:
    """Every path under ``root`` (``root`` included), or None when there are too many to track."""
    if not root.exists():
        return set()
    found = {root}
    for path in root.rglob("*"):
        found.add(path)
        if len(found) > MAX_LISTED:
            return None
    return found


class OutputGuard:
    """``with OutputGuard(path): run()`` — see the module docstring."""

    def __init__(self, path: str | os.PathLike, *, option: str = "--out", track_files: bool = True) -> None:
        """``track_files=False`` for the folder of a single output file (written atomically, so nothing partial
        stays): only the folders made here are removed, and an existing folder (say, the home directory) is not
        walked."""
        self.path = Path(path).expanduser()
        self.option = option
        self.track_files = track_files
        self.writer = os.environ.get("RANK", "0") == "0"
        self.before: set[Path] | None = set()
        self.made: list[Path] = []  # folders created here, outermost first

    def __enter__(self) -> "OutputGuard":
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.option} {self.path}: exists and is not a directory")
        missing, parent = [], self.path
        while not parent.exists() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"{self.option} {self.path}: cannot create the directory ({error.strerror or error})"
            ) from None
        self.made = list(reversed(missing))
        self.before = _listing(self.path) if self.track_files else None
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if error is None or not isinstance(error, (VitlabError, OSError)) or not self.writer:
            return
        self.clean()

    def clean(self) -> None:
        """Remove what was created since ``__enter__``, unless weights were written."""
        after = _listing(self.path) if self.before is not None else None
        new = after - self.before if after is not None and self.before is not None else set()
        if any(p.suffix in KEEP_SUFFIXES or set(p.relative_to(self.path).parts) & set(KEEP_DIRS) for p in new):
            return
        for path in sorted(new, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.unlink()
                except OSError:
                    pass
        for folder in reversed(self.made):  # innermost first; only if still empty
            try:
                folder.rmdir()
            except OSError:
                break
