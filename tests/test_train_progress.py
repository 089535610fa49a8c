"""The progress helper: a bar on a terminal, log lines elsewhere, silence when disabled (other ranks)."""
from __future__ import annotations

import io
import logging

from vitlab.progress import Progress, format_duration, results_table


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_shows_step_loss_lr_speed_and_eta():
    out = _Tty()
    bar = Progress(100, desc="pretrain", stream=out)
    for step in range(1, 101):
        bar.update(step, loss=0.5, lr=1e-3, img_s=800)
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "pretrain 100/100" in text
    for field in ("loss 0.5", "lr 0.001", "img/s 800", "ETA"):
        assert field in text


def test_log_lines_when_not_a_terminal(caplog):
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="vitlab.progress"):
        bar = Progress(20, desc="finetune", stream=out, log_every=5)
        for step in range(1, 21):
            bar.update(step, loss=1.0)
    assert out.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and "step 20/20" in lines[-1]


def test_disabled_progress_is_silent(caplog):
    out = _Tty()
    with caplog.at_level(logging.INFO, logger="vitlab.progress"):
        bar = Progress(10, stream=out, enabled=False, log_every=1)
        for step in range(1, 11):
            bar.update(step, loss=1.0)
        bar.message("done")
    assert out.getvalue() == "" and not caplog.records


def test_helpers():
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"
    table = results_table([("test accuracy", 0.9123), ("steps", 100)])
    assert "test accuracy  0.9123" in table
