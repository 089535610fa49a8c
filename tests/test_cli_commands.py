"""Every command the CLI lists is shipped: `vitlab` has no "not available in this build" path to fall back on."""
from __future__ import annotations

import importlib.util

import pytest

from vitlab.cli import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_listed_command_has_its_module(name: str) -> None:
    module_name = COMMANDS[name][0]
    assert importlib.util.find_spec(module_name) is not None, module_name
