"""Figures into a run's TensorBoard event files (``RUN/tensorboard/``), when the run has them.

Written with the ``tensorboard`` package's own event writer (an optional dependency, imported only here and only
when called), so the report layer needs neither torch nor a SummaryWriter.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Mapping

from PIL import Image

log = logging.getLogger(__name__)


def log_figures(log_dir: str | os.PathLike, figures: Mapping[str, str | os.PathLike], step: int = 0) -> bool:
    """Add each PNG as an image summary tagged ``figures/<name>``; False (and a debug line) when tensorboard is
    not installed or ``log_dir`` does not exist (the run did not use TensorBoard)."""
    directory = Path(log_dir)
    if not directory.is_dir() or not figures:
        return False
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        log.debug("tensorboard is not installed; figures not logged to %s", directory)
        return False
    values = []
    for name, path in figures.items():
        data = Path(path).read_bytes()
        with Image.open(path) as image:
            width, height = image.size
        image_summary = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
        values.append(Summary.Value(tag=f"figures/{name}", image=image_summary))
    writer = EventFileWriter(str(directory), filename_suffix=".figures")
    writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
    writer.close()
    return True
