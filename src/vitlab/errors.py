"""Errors that reach the user.

Everything the user can get wrong (a config key, a file, a shape) raises a subclass of
:class:`VitlabError`. The CLI turns these into one line on stderr and exit status 2, so the message
itself must name the offending file, field or value and what was expected.
"""
from __future__ import annotations


class VitlabError(ValueError):
    """A user-facing error: bad input, not a bug. The message is shown as-is."""


class ConfigError(VitlabError):
    """A configuration key or value is unknown or invalid."""


class ShapeError(VitlabError):
    """An input tensor or image does not fit the model (channels, size, patch divisibility)."""


class CheckpointError(VitlabError):
    """A weights file cannot be read or does not fit the model (missing, unexpected, mis-shaped keys)."""


class DataError(VitlabError):
    """A dataset file is missing, corrupt, or holds values out of range."""


class ResumeMismatchError(ConfigError):
    """``--resume`` of a run whose saved config differs in keys that change the computation.

    Callers that resume on the user's behalf (``vitlab suite``, studies) catch it to give advice that fits them.
    """

    def __init__(self, message: str, *, config_path: str = "", keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.config_path = config_path
        self.keys = tuple(keys)


class DownloadError(VitlabError):
    """A download failed: unreachable server, a changed or tampered file (SHA-256), a URL that names no file."""
