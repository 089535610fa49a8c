"""The table of named data sources: ``get_source(name, split="train", **options)``.

Source modules add their factories with :func:`register` when they are imported (``vitlab.data.sources`` the
built-in and file-based ones, ``vitlab.data.subset`` the VTAB-style subsets); ``vitlab.data`` imports them all,
and Python runs that package's ``__init__`` before any of its modules, so the table is complete whenever a
caller can reach it. The table sits below the sources, so a source that wraps another (``subset``) looks it up
here without importing the module that defines it.
"""
from __future__ import annotations

import inspect
from typing import Callable

from vitlab.data.base import Source
from vitlab.errors import ConfigError

Factory = Callable[..., Source]

_FACTORIES: dict[str, Factory] = {}
ALIASES = {"fashionmnist": "fashion_mnist", "oxford_iiit_pet": "pets", "oxford_flowers102": "flowers102",
           "flowers": "flowers102", "folder": "image_folder", "webdataset": "shards"}


def register(name: str, factory: Factory) -> Factory:
    """Make ``factory(split, **options) -> Source`` available as ``get_source(name, ...)``."""
    if name in _FACTORIES and _FACTORIES[name] is not factory:
        raise ValueError(f"data source {name!r} is registered twice")
    _FACTORIES[name] = factory
    return factory


def list_sources() -> list[str]:
    return sorted(_FACTORIES)


def get_source(name: str, split: str = "train", **options) -> Source:
    """Build the named source; unknown names and options are a :class:`ConfigError` that lists valid ones."""
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in _FACTORIES:
        raise ConfigError(f"unknown data source {name!r}; expected one of {list_sources()}")
    factory = _FACTORIES[key]
    params = inspect.signature(factory).parameters
    accepted = [p for p in params if p != "split"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"{key}: unknown option(s) {unknown}; accepted: {accepted}")
    missing = [p for p in accepted if params[p].default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"{key}: missing required option(s) {missing}, e.g. get_source({key!r}, root='/path')")
    return factory(split, **options)
