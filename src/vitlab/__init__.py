"""vitlab: the Vision Transformer of "An Image is Worth 16x16 Words" as usable software.

The public face is short on purpose::

    import vitlab
    model = vitlab.create_model("vit_b16", num_classes=10, img_size=384)
    model = vitlab.create_model("vit_b16", pretrained="augreg_i21k", num_classes=10)  # published weights
    vitlab.Predictor("run/checkpoints/best.safetensors").predict(["cat.jpg"])
    vitlab.list_models()
    vitlab.save_model(model, "model.safetensors"); model = vitlab.load_model("model.safetensors")
"""
from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import Any

# Resolved on first use (PEP 562), so `import vitlab` and commands that need no model (`vitlab models`, `--help`)
# do not pay seconds for importing torch; `Predictor` does not import prediction (and training) code either.
_PUBLIC = {
    "create_model": "vitlab.weights.pretrained",  # the registry's, plus pretrained=
    "list_models": "vitlab.models.registry",
    "load_model": "vitlab.models.weights",
    "save_model": "vitlab.models.weights",
    "Predictor": "vitlab.predict",
}

__all__ = ["Predictor", "create_model", "list_models", "load_model", "save_model", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
