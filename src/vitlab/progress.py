"""The one progress display of vitlab: a bar on a terminal, periodic log lines elsewhere, silence off rank 0.

On a TTY (and rank 0) a single line is redrawn in place::

    pretrain  1200/3000 [########............]  40%  loss 0.412  lr 1.2e-03  812 img/s  ETA 2:14

Not on a TTY (a log file, CI, a notebook capturing stderr) the same fields go through ``logging`` once every
``log_every`` steps, so logs stay readable. Other ranks never print.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import IO, Any

log = logging.getLogger("vitlab.progress")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            return f"{value:.4g}"
        return f"{value:.1e}"
    return str(value)


class Progress:
    """Step progress with ETA. ``update(step, loss=..., lr=..., img_s=...)`` after each optimiser step."""

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        start: int = 0,
        log_every: int = 50,
        enabled: bool = True,
        stream: IO[str] | None = None,
        width: int = 24,
    ) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.start_step = start
        self.log_every = max(int(log_every), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and _is_tty(self.stream)
        self.width = width
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._line_len = 0

    def update(self, step: int, **fields: Any) -> None:
        """Report that ``step`` optimiser steps are done (``fields`` e.g. loss, lr, img_s)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        done = step - self.start_step
        rate = done / (now - self._t0) if now > self._t0 and done > 0 else float("nan")
        eta = (self.total - step) / rate if rate and math.isfinite(rate) and rate > 0 else float("nan")
        text = "  ".join(f"{key.replace('_', '/') if key == 'img_s' else key} {_format_value(value)}"
                         for key, value in fields.items() if value is not None)
        if self.tty:
            if now - self._last_draw < 0.1 and step < self.total:
                return
            self._last_draw = now
            filled = int(self.width * min(step / self.total, 1.0))
            bar = "#" * filled + "." * (self.width - filled)
            line = (f"{self.desc} {step}/{self.total} [{bar}] {100 * step / self.total:3.0f}%  {text}"
                    f"  ETA {format_duration(eta)}")
            pad = max(self._line_len - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()
            self._line_len = len(line)
        elif step % self.log_every == 0 or step == self.total:
            log.info("%s step %d/%d  %s  ETA %s", self.desc, step, self.total, text, format_duration(eta))

    def message(self, text: str) -> None:
        """A line that must not be overwritten by the bar (evaluation results, warnings)."""
        if not self.enabled:
            return
        if self.tty and self._line_len:
            self.stream.write("\n")
            self._line_len = 0
        log.info("%s", text)

    def close(self) -> None:
        if self.enabled and self.tty and self._line_len:
            self.stream.write("\n")
            self.stream.flush()
            self._line_len = 0


def _is_tty(stream: IO[str]) -> bool:
    if os.environ.get("VITLAB_PROGRESS") == "always":
        return True
    if os.environ.get("VITLAB_PROGRESS") == "never":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def results_table(rows: list[tuple[str, Any]], title: str = "results") -> str:
    """A short two-column table for the end of a run."""
    shown = [(name, _format_value(value)) for name, value in rows]
    width = max((len(name) for name, _ in shown), default=0)
    lines = [title, "-" * max(len(title), width + 14)]
    lines += [f"{name:<{width}}  {value}" for name, value in shown]
    return "\n".join(lines)
