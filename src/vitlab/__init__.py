"""vitlab: the Vision Transformer of "An Image is Worth 16x16 Words" as usable software.

The public face is short on purpose::

    import vitlab
    model = vitlab.create_model("vit_b16", num_classes=10, img_size=384)
    vitlab.list_models()
    vitlab.save_model(model, "model.safetensors"); model = vitlab.load_model("model.safetensors")
"""
from __future__ import annotations

__version__ = "0.1.0"

from vitlab.models.registry import create_model, list_models  # noqa: E402
from vitlab.models.weights import load_model, save_model  # noqa: E402

__all__ = ["create_model", "list_models", "load_model", "save_model", "__version__"]
