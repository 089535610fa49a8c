"""The official checkpoints' ``.npz`` layout (google-research/vision_transformer): load and export.

The whole mapping between official keys and ours is one table, built per model by :func:`key_table`: each row
names the official key, our state-dict key and the layout that converts between them. Loading and exporting
read the same table, so they cannot drift apart. BiT and the hybrids' ResNet add their rows from
``vitlab.interop.official_resnet``.

Official layouts: conv kernels HWIO, dense kernels [in, out], attention q/k/v kernels [D, heads, head_dim],
attention output kernel [heads, head_dim, D]. Ours: torch's OIHW and [out, in], with q, k, v fused into one
``qkv`` matrix (thirds in that order).
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from pathlib import Path
import numpy as np
import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.interop.keymap import KeyMap
from vitlab.interop.official_resnet import bit_config_from_npz, bit_rows, hybrid_fields_from_npz, hybrid_rows
from vitlab.models.layers import hybrid_stride
from vitlab.models.registry import build_from_config, create_model
from vitlab.models.weights import atomic_write, load_weights, model_family

log = logging.getLogger(__name__)

PREFIXES = ("", "opt/target/", "params/")  # where training code of different eras nested the parameters


def _to_torch(layout: str, array: np.ndarray, heads: int) -> np.ndarray:
    if layout == "conv":  # HWIO -> OIHW
        return array.transpose(3, 2, 0, 1)
    if layout == "dense":  # [in, out] -> [out, in]
        return array.T
    if layout == "attn_in":  # [D, heads, head_dim] -> [heads*head_dim, D]
        return array.reshape(array.shape[0], -1).T
    if layout == "attn_in_bias":  # [heads, head_dim] -> [heads*head_dim]
        return array.reshape(-1)
    if layout == "attn_out":  # [heads, head_dim, D] -> [D, heads*head_dim]
        return array.reshape(-1, array.shape[-1]).T
    if layout == "conv_dense":  # a 1x1 conv kernel [1, 1, in, out] held as a dense [out, in] (BiT's head)
        return array.reshape(-1, array.shape[-1]).T
    if layout == "norm":  # a norm's scale or bias: [C], or [1, 1, 1, C] as hybrid and BiT files store GroupNorm
        return array.reshape(-1) if array.ndim > 1 and all(n == 1 for n in array.shape[:-1]) else array
    if layout == "same":
        return array
    raise ValueError(f"unknown layout {layout}")


def _to_official(layout: str, array: np.ndarray, heads: int) -> np.ndarray:
    if layout == "conv":
        return array.transpose(2, 3, 1, 0)
    if layout == "dense":
        return array.T
    if layout == "attn_in":
        return array.T.reshape(array.shape[1], heads, -1)
    if layout == "attn_in_bias":
        return array.reshape(heads, -1)
    if layout == "attn_out":
        return array.T.reshape(heads, -1, array.shape[0])
    if layout == "conv_dense":
        return array.T[None, None]
    if layout in ("same", "norm"):
        return array
    raise ValueError(f"unknown layout {layout}")


# The two namings of an encoder block's modules in official files. Published checkpoints come from the
# original Flax code, which numbered a block's sub-modules in one sequence (LayerNorm_0, attention _1, dropout,
# LayerNorm_2, MlpBlock_3); the current Flax code (vit_jax/models_vit.py, big_vision) numbers each type on its
# own (LayerNorm_0, LayerNorm_1, MultiHeadDotProductAttention_0, MlpBlock_0). Loading recognises both.
NAMINGS: dict[str, dict[str, str]] = {
    "published": dict(norm1="LayerNorm_0", attn="MultiHeadDotProductAttention_1", norm2="LayerNorm_2", mlp="MlpBlock_3"),
    "current": dict(norm1="LayerNorm_0", attn="MultiHeadDotProductAttention_0", norm2="LayerNorm_1", mlp="MlpBlock_0"),
}


def naming_of(arrays: dict[str, np.ndarray]) -> str:
    """Which of :data:`NAMINGS` a checkpoint's keys use (``published`` when it has no encoder block)."""
    current = NAMINGS["current"]["attn"]
    return "current" if any(f"/{current}/" in key for key in arrays) else "published"


def _vit_rows(model: nn.Module, naming: str = "published") -> list[KeyMap]:
    cfg = model.config
    names = NAMINGS[naming]
    heads = cfg.num_heads
    rows = [KeyMap("embedding/kernel", "patch_embed.proj.weight", "conv"), KeyMap("embedding/bias", "patch_embed.proj.bias", "same")]
    if cfg.classifier == "token":
        rows.append(KeyMap("cls", "cls_token", "same"))
    if cfg.posemb == "learned":
        rows.append(KeyMap("Transformer/posembed_input/pos_embedding", "pos_embed.weight", "same"))
    elif cfg.posemb == "learned_2d":  # no official layout exists; vitlab's own names under the same scope
        for part in ("row", "col", "prefix"):
            rows.append(KeyMap(f"Transformer/posembed_input/{part}_embedding", f"pos_embed.{part}", "same"))
    for index in range(cfg.depth):
        scope, ours = f"Transformer/encoderblock_{index}", f"blocks.{index}"
        attn, norm1, norm2, mlp = (f"{scope}/{names[k]}" for k in ("attn", "norm1", "norm2", "mlp"))
        rows += [
            KeyMap(f"{norm1}/scale", f"{ours}.norm1.weight", "norm"),
            KeyMap(f"{norm1}/bias", f"{ours}.norm1.bias", "norm"),
            KeyMap(f"{attn}/out/kernel", f"{ours}.attn.proj.weight", "attn_out", heads=heads),
            KeyMap(f"{attn}/out/bias", f"{ours}.attn.proj.bias", "same"),
            KeyMap(f"{norm2}/scale", f"{ours}.norm2.weight", "norm"),
            KeyMap(f"{norm2}/bias", f"{ours}.norm2.bias", "norm"),
            KeyMap(f"{mlp}/Dense_0/kernel", f"{ours}.mlp.fc1.weight", "dense"),
            KeyMap(f"{mlp}/Dense_0/bias", f"{ours}.mlp.fc1.bias", "same"),
            KeyMap(f"{mlp}/Dense_1/kernel", f"{ours}.mlp.fc2.weight", "dense"),
            KeyMap(f"{mlp}/Dense_1/bias", f"{ours}.mlp.fc2.bias", "same"),
        ]
        for part, name in enumerate(("query", "key", "value")):
            rows.append(KeyMap(f"{attn}/{name}/kernel", f"{ours}.attn.qkv.weight", "attn_in", part, heads))
            if cfg.qkv_bias:
                rows.append(KeyMap(f"{attn}/{name}/bias", f"{ours}.attn.qkv.bias", "attn_in_bias", part, heads))
    rows += [
        KeyMap("Transformer/encoder_norm/scale", "norm.weight", "norm"),
        KeyMap("Transformer/encoder_norm/bias", "norm.bias", "norm"),
    ]
    if cfg.representation_size:
        rows += [KeyMap("pre_logits/kernel", "pre_logits.fc.weight", "dense"), KeyMap("pre_logits/bias", "pre_logits.fc.bias", "same")]
    if cfg.num_classes:
        rows += [KeyMap("head/kernel", "head.weight", "dense"), KeyMap("head/bias", "head.bias", "same")]
    if cfg.is_hybrid:
        rows += hybrid_rows(model)
    return rows


def key_table(model: nn.Module, naming: str = "published") -> list[KeyMap]:
    """Every official key of ``model`` with our key and layout, in one of :data:`NAMINGS`."""
    family = model_family(model)
    if family == "vit":
        return _vit_rows(model, naming)
    if family == "bit":
        return bit_rows(model)
    raise CheckpointError(f"no official .npz layout for model family {family!r}")


def state_dict_from_npz(model: nn.Module, arrays: dict[str, np.ndarray], source: str) -> dict[str, torch.Tensor]:
    """Our state dict from official arrays (either naming); fused q/k/v parts are concatenated in order."""
    rows = key_table(model, naming_of(arrays))
    missing = [row.official for row in rows if row.official not in arrays]
    if missing:
        shown = ", ".join(missing[:6]) + (f" ... ({len(missing) - 6} more)" if len(missing) > 6 else "")
        raise CheckpointError(f"{source} lacks official key(s) {shown} for {type(model).__name__}")
    used = {row.official for row in rows}
    extra = sorted(key for key in arrays if key not in used)
    if extra:
        hint = " (a pre-training checkpoint: use vitlab.weights.resolve(path).build(num_classes=K) to drop pre_logits/head)" if any(
            k.startswith(("pre_logits", "head")) for k in extra) else ""
        raise CheckpointError(f"{source} has official key(s) the model does not use: {', '.join(extra[:6])}{hint}")
    parts: dict[str, list[tuple[int, np.ndarray]]] = {}
    state: dict[str, torch.Tensor] = {}
    for row in rows:
        array = _to_torch(row.layout, np.asarray(arrays[row.official], dtype=np.float32), row.heads)
        if row.layout == "norm" and array.ndim != 1:
            raise CheckpointError(f"{source}: {row.official} has shape {tuple(arrays[row.official].shape)}; "
                                  "a norm parameter must be [C] or [1, 1, 1, C]")
        if row.part is None:
            state[row.ours] = torch.from_numpy(np.ascontiguousarray(array))
        else:
            parts.setdefault(row.ours, []).append((row.part, array))
    for key, pieces in parts.items():
        state[key] = torch.from_numpy(np.concatenate([a for _, a in sorted(pieces, key=lambda p: p[0])], axis=0))
    return state


def require_npz_archive(path: str | os.PathLike, name: str | None = None) -> None:
    """Refuse a file that is no zip archive before numpy sees it: numpy would try it as a pickle and advise
    ``allow_pickle``, which is never right for weights (``name``: how the user referred to the file)."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{name or path}: not a readable .npz archive (truncated, corrupt or another format)")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays of an official checkpoint, with the training-era prefix removed (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    require_npz_archive(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable .npz archive, corrupt or truncated ({reason})") from None
    for prefix in PREFIXES[1:]:
        if any(key.startswith(prefix) for key in arrays):
            arrays = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
            break
    return arrays


def load_npz(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an official checkpoint into ``model`` (position embeddings of another grid are resized)."""
    state = state_dict_from_npz(model, read_npz(path), str(path))
    load_weights(model, state, source=str(path))
    return model


def save_npz(model: nn.Module, path: str | os.PathLike, naming: str = "published") -> None:
    """Export ``model`` in the official layout (float32), readable by the official code and by timm's loader.

    ``naming="published"`` writes the released checkpoints' module names, ``"current"`` those of today's Flax code.

    The layout has no field for the activation: every reader (the official code, timm's npz loader, ours) runs
    the official tanh-approximated GELU. A model trained with exact GELU (``gelu="exact"``, as timm and Hugging Face
    ViTs) is exported anyway, since its weights are still right, with a warning that says how to keep its numerics.
    """
    gelu = getattr(getattr(model, "config", None), "gelu", "tanh")
    if gelu != "tanh":
        log.warning("%s: the model uses %s GELU but the official .npz layout cannot record it; readers will run the "
                    "tanh approximation (logits drift ~1e-4). Reload with vitlab.interop.official.load_npz_any(path, "
                    "gelu=%r), or export to .safetensors, which keeps it", path, gelu, gelu)
    if naming not in NAMINGS:
        raise CheckpointError(f"naming={naming!r}; expected one of {', '.join(NAMINGS)}")
    state = {key: value.detach().cpu().float().numpy() for key, value in model.state_dict().items()}
    arrays: dict[str, np.ndarray] = {}
    for row in key_table(model, naming):
        array = state[row.ours]
        if row.part is not None:
            array = np.split(array, 3, axis=0)[row.part]
        arrays[row.official] = np.ascontiguousarray(_to_official(row.layout, array, row.heads))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def config_from_npz(arrays: dict[str, np.ndarray], source: str = "checkpoint") -> tuple[str, dict]:
    """Read a model's architecture off an official checkpoint's keys and shapes: ``(family, config fields)``."""
    try:
        return _config_from_npz(arrays)
    except KeyError as error:
        raise CheckpointError(f"{source}: incomplete official checkpoint, it lacks the key {error}") from None
    except CheckpointError as error:  # name the file, once
        if source in str(error):
            raise
        raise CheckpointError(f"{source}: {error}") from None


def _config_from_npz(arrays: dict[str, np.ndarray]) -> tuple[str, dict]:
    if any(key.startswith("resnet/") for key in arrays) and "embedding/kernel" not in arrays:
        return "bit", bit_config_from_npz(arrays)
    if "embedding/kernel" not in arrays:
        raise CheckpointError("not an official ViT or BiT checkpoint: no 'embedding/kernel' and no 'resnet/' keys")
    kernel = arrays["embedding/kernel"]  # [P, P, C, D]
    depth = len({m[1] for key in arrays if (m := re.match(r"Transformer/encoderblock_(\d+)/", key))})
    names = NAMINGS[naming_of(arrays)]
    attn, mlp = f"Transformer/encoderblock_0/{names['attn']}", f"Transformer/encoderblock_0/{names['mlp']}"
    for needed in (f"{attn}/query/kernel", f"{mlp}/Dense_0/kernel"):
        if needed not in arrays:
            raise CheckpointError(f"not a readable official ViT checkpoint: no {needed!r}")
    query = arrays[f"{attn}/query/kernel"]  # [D, heads, head_dim]
    fields: dict = dict(
        patch_size=int(kernel.shape[0]),
        in_chans=int(kernel.shape[2]),
        width=int(kernel.shape[3]),
        depth=depth,
        num_heads=int(query.shape[1]),
        mlp_dim=int(arrays[f"{mlp}/Dense_0/kernel"].shape[1]),
        classifier="token" if "cls" in arrays else "gap",
        representation_size=int(arrays["pre_logits/kernel"].shape[1]) if "pre_logits/kernel" in arrays else None,
        num_classes=int(arrays["head/bias"].shape[0]) if "head/bias" in arrays else 0,
        qkv_bias=f"{attn}/query/bias" in arrays,
    )
    stride = fields["patch_size"]
    if "conv_root/kernel" in arrays:
        fields.update(hybrid_fields_from_npz(arrays))  # stages, stem width, and in_chans from the ResNet's root conv
        stride *= hybrid_stride(fields["hybrid_layers"])
    pos_key = "Transformer/posembed_input/pos_embedding"
    if pos_key in arrays:
        num_patches = arrays[pos_key].shape[1] - (1 if fields["classifier"] == "token" else 0)
        side = int(round(num_patches**0.5))
        fields["img_size"] = side * stride
    else:
        fields["posemb"] = "none"
        fields["img_size"] = 224
    return "vit", fields


def load_npz_any(path: str | os.PathLike, model_name: str | None = None, **overrides) -> nn.Module:
    """Build the model an official checkpoint describes (or ``model_name`` when given) and load it."""
    arrays = read_npz(path)
    family, fields = config_from_npz(arrays, str(path))
    fields.update(overrides)
    if model_name is not None:
        # The name fixes the architecture; the checkpoint still decides head, resolution and pooling.
        kept = ("num_classes", "img_size", "in_chans", "representation_size", "classifier")
        model = create_model(model_name, **{**{k: fields[k] for k in kept if k in fields}, **overrides})
    else:
        model = build_from_config(family, fields)
    load_weights(model, state_dict_from_npz(model, arrays, str(path)), source=str(path))
    return model

