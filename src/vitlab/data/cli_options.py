"""``KEY=VALUE`` source options and ``NAME[:SPLIT]`` source names as the data commands take them."""
from __future__ import annotations

from vitlab.errors import ConfigError


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {pair!r} is not KEY=VALUE")
        options[key.strip()] = option_value(value.strip())
    return options


def option_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def source_spec(text: str, default_split: str) -> tuple[str, str]:
    name, _, split = text.partition(":")
    return name, split or default_split
