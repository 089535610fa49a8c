"""The run directory: what a finished (or interrupted) run leaves for people and for other tools.

::

    RUN/config.yaml          the resolved config (load_config(RUN/config.yaml) rebuilds it exactly)
    RUN/metrics.jsonl        one JSON object per log step / evaluation: {"step": ..., "loss": ..., ...}
    RUN/checkpoints/         last.safetensors + last.state.safetensors (resume), best.safetensors (evaluation weights)
    RUN/summary.json         task, model, dataset, steps, wall_seconds, images_per_second, metrics{test_accuracy}
    RUN/bad_files.txt        images the source skipped, one "path<TAB>reason" a line (only when there are any)
    RUN/tensorboard/         TensorBoard event files (when tensorboard is installed)

Only rank 0 writes; every writer here is a no-op on other ranks.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

from vitlab.models.weights import atomic_write

log = logging.getLogger(__name__)


class RunDir:
    def __init__(self, root: str | os.PathLike, *, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer
        self._tb = None
        if writer:
            self.root.mkdir(parents=True, exist_ok=True)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def write_text(self, name: str, text: str) -> None:
        if self.writer:
            atomic_write(self.root / name, lambda tmp: Path(tmp).write_text(text))

    def write_json(self, name: str, data: Any) -> None:
        self.write_text(name, json.dumps(_finite(data), indent=2, sort_keys=False) + "\n")

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (flushed at once, so a watcher sees progress) and TensorBoard."""
        if not self.writer:
            return
        with open(self.metrics, "a") as handle:
            handle.write(json.dumps(_finite(record)) + "\n")
            handle.flush()
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, record["step"])

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: drop records the killed run wrote after its last checkpoint (they will be written again)."""
        if not self.writer or not self.metrics.exists():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if int(record.get("step", 0)) <= last_step:
                kept.append(line)
        self.write_text("metrics.jsonl", "".join(f"{line}\n" for line in kept))

    def open_tensorboard(self, purge_step: int | None) -> None:
        if not self.writer:
            return
        events = self.root / "tensorboard"
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional; say so without -v, with the fix
            log.info("no TensorBoard logs: tensorboard is not installed (pip install 'vitlab[tensorboard]'); "
                     "the metrics are in %s", self.metrics)
            return
        self._tb = SummaryWriter(str(events), purge_step=purge_step)
        log.info("TensorBoard logs: %s (view with: tensorboard --logdir %s)", events, events)

    def write_bad_files(self, bad_files: Iterable[tuple[str, str]]) -> None:
        rows = [f"{path}\t{reason}" for path, reason in bad_files]
        if rows:
            self.write_text("bad_files.txt", "\n".join(rows) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _finite(data: Any) -> Any:
    """JSON has no NaN / Infinity: write them as null so every reader can parse the files."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data
