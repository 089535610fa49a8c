"""Prediction on image files: ``Predictor(ref).predict(images)`` and ``vitlab predict`` (PyTorch or onnxruntime).

    from vitlab import Predictor
    predictor = Predictor("runs/pets/checkpoints/best.safetensors")   # or model.onnx, pretrained:..., a URL
    for p in predictor.predict(["cat.jpg", "dog.png"], top_k=3):
        print(p.source, p.top)        # [(class name, class index, probability), ...]
"""
from __future__ import annotations

from vitlab.predict.inputs import expand_inputs
from vitlab.predict.predictor import Prediction, Predictor

__all__ = ["Predictor", "Prediction", "expand_inputs"]
