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

from vitlab.models.registry import list_models  # noqa: E402
from vitlab.models.weights import load_model, save_model  # noqa: E402
from vitlab.weights.pretrained import create_model  # noqa: E402  (the registry's, plus pretrained=)



def __getattr__(name: str):
    """``vitlab.Predictor`` without importing prediction (and training) code on ``import vitlab``."""
    if name == "Predictor":
        from vitlab.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")


__all__ = ["Predictor", "create_model", "list_models", "load_model", "save_model", "__version__"]
