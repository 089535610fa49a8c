"""Shared test set-up: deterministic seeds, and few threads so parallel helpers don't thrash 2 cores."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def jitter_(module: torch.nn.Module, scale: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so that zero-initialised parts (heads, cls token) take part in parity checks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return module


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm().clamp_min(1e-12)).item()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own vitlab cache (timm conversions, downloads): nothing lands in ~/.cache."""
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path_factory.mktemp("vitlab-cache")))
