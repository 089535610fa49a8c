"""Training state (optimiser, EMA, scaler, RNG, data position) as one safetensors file: no pickle anywhere.

``torch.save`` with a pickling ``torch.load`` would run whatever code a crafted ``last.state.pt`` carries, so
``--resume`` on a run directory from someone else would be unsafe. Here the state is split into

* its tensors and numpy arrays, stored as the file's tensors (raw data; nothing executes when read), and
* its structure (nested dicts with str or int keys, lists, tuples, ints, floats, bools, None, str), stored as JSON
  in the file's ``__metadata__``.

Every value comes back bit-exact (floats are written with ``repr``, which round-trips; dtypes are kept), and
tuples stay tuples, so ``random.setstate`` and ``numpy.random.set_state`` accept what they saved. A type outside
this set is refused when saving (a bug to fix here, not something to pickle).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

META_KEY = "vitlab.state"
FORMAT = "vitlab-state/1"


def encode(tree: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """``(json skeleton, tensors)`` of a nested state; see the module docstring for what it may hold."""
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()

    def tensor_ref(value: torch.Tensor) -> str:
        name = f"t{len(tensors)}"
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage()
        if storage.data_ptr() in seen_storage or storage.nbytes() != value.numel() * value.element_size():
            value = value.clone()  # safetensors refuses tensors that share or only partly cover a storage
        seen_storage.add(value.untyped_storage().data_ptr())
        tensors[name] = value
        return name

    def walk(value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return value
        if isinstance(value, torch.Tensor):
            return {"tensor": tensor_ref(value)}
        if isinstance(value, np.ndarray):
            raw = torch.from_numpy(np.ascontiguousarray(value).reshape(-1).view(np.uint8).copy())
            return {"ndarray": tensor_ref(raw), "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, np.generic):
            return {"npscalar": value.dtype.str, "value": value.item()}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise TypeError(f"training state {where}: key {key!r} is neither str nor int")
                items.append([key, walk(item, f"{where}.{key}")])
            return {"dict": items}
        if isinstance(value, tuple):
            return {"tuple": [walk(item, f"{where}[{i}]") for i, item in enumerate(value)]}
        if isinstance(value, list):
            return [walk(item, f"{where}[{i}]") for i, item in enumerate(value)]
        raise TypeError(f"training state {where}: cannot store a {type(value).__name__} without pickle")

    skeleton = walk(tree, "state")
    return json.dumps({"format": FORMAT, "tree": skeleton}, allow_nan=True), tensors


def decode(text: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The state :func:`encode` split up."""
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} training state")

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "dict" in node:
            return {key: walk(item) for key, item in node["dict"]}
        if "tuple" in node:
            return tuple(walk(item) for item in node["tuple"])
        if "tensor" in node:
            return tensors[node["tensor"]]
        if "ndarray" in node:
            raw = tensors[node["ndarray"]].numpy()
            return raw.view(np.dtype(node["dtype"])).reshape(node["shape"]).copy()
        if "npscalar" in node:
            return np.dtype(node["npscalar"]).type(node["value"])
        raise ValueError(f"unknown node {sorted(node)} in a training state")

    return walk(document["tree"])


def save_state(state: Any, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` (call inside an atomic write: this writes in place)."""
    from safetensors.torch import save_file

    text, tensors = encode(state)
    save_file(tensors, str(path), metadata={META_KEY: text})


def load_state(path: str | os.PathLike) -> Any:
    """Read a state written by :func:`save_state`; nothing in the file can run code."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        if META_KEY not in metadata:
            raise ValueError("no vitlab training state in this file")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return decode(metadata[META_KEY], tensors)
