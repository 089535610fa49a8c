"""The one place that reads a weights reference: ``resolve(ref) -> WeightsRef``.

Every command that takes a checkpoint (``model.init_from``, ``vitlab eval``, ``fewshot``, ``suite``,
``inspect``) passes the user's string here and gets back what the weights are (family, config, input channels,
resolution, classes, preprocessing) before any tensor is read, and a ``build()`` that makes the model.

==============  ===================================================================================
reference       kind and what is read
==============  ===================================================================================
FILE.safetensors  ``safetensors``: written by vitlab (family + config in the metadata)
RUN_DIR           ``run_dir``: its ``checkpoints/best.safetensors``, else ``checkpoints/last.safetensors``
FILE.npz          ``npz``: an official checkpoint; the architecture is read off its keys and shapes
timm:NAME[@FILE]  ``timm``: timm's weights for NAME (timm's download / cache, or the local FILE), converted
                  once into vitlab's cache (:mod:`vitlab.weights.cache`) and reused
hf:NAME           ``hf``: a Hugging Face ViT (hub id or local directory), converted in memory
pretrained:M.TAG  ``pretrained``: a published checkpoint of the catalogue (``vitlab weights``), downloaded once
http(s)://, file://  ``url``: any weights file at a URL, downloaded once (:mod:`vitlab.weights.download`)
==============  ===================================================================================

Adding a kind (``pretrained:NAME.TAG``, URLs): give :func:`kind_of` its prefix in ``PREFIX_KINDS`` and
register a function ``(ref, model_name) -> WeightsRef`` in ``RESOLVERS``; a kind that fetches a file
usually ends by calling :func:`resolve_file` on it.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from vitlab.errors import CheckpointError, VitlabError
from vitlab.interop import official
from vitlab.interop.hf import from_hf
from vitlab.interop.timm import from_timm
from vitlab.models.registry import build_from_config, create_model
from vitlab.models.weights import (CLASSES_KEY, PREPROCESSING_KEY, config_dict, load_weights, model_family,
                                   read_metadata, read_safetensors, save_model)
from vitlab.weights.cache import cached_file, file_sha256
from vitlab.weights.remote import PRETRAINED_PREFIX, URL_PREFIXES, fetch_reference

RUN_DIR_CANDIDATES = ("checkpoints/best.safetensors", "checkpoints/last.safetensors", "best.safetensors")
# Keys of a model that belong to pre-training only: the transfer set-up (Section 3.2) replaces or drops them.
PRETRAINING_ONLY = ("head.", "pre_logits.", "fc.", "mpp_head.", "mask_token")
KNOWN = ("a .safetensors file, a run directory, an official .npz, timm:NAME[@FILE], hf:NAME, pretrained:MODEL.TAG "
         "or an http(s):// / file:// URL")

Ref = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True, eq=False)
class WeightsRef:
    """What a reference points at, known before the weights are read; :meth:`build` makes the model."""

    ref: str  # as the user wrote it
    kind: str  # "safetensors" | "run_dir" | "npz" | "timm" | "hf" | "pretrained" | "url" (see the module docstring)
    family: str  # "vit" | "bit"
    config: Mapping[str, Any]  # the model's full config fields: the spec that rebuilds it
    path: Path | None = None  # the local file holding the weights (None for a model converted in memory)
    classes: tuple[str, ...] | int | None = None  # class names where known, else the head's output count
    preprocessing: Mapping[str, Any] | None = None  # img_size, resize, mean, std, channels, in_chans (+ timm crop)
    _load: Callable[[dict[str, Any]], nn.Module] = field(default=None, repr=False, compare=False)  # type: ignore

    @property
    def in_chans(self) -> int:
        return int(self.config.get("in_chans", 3))

    @property
    def img_size(self) -> tuple[int, int]:
        size = self.config.get("img_size", 224)
        return tuple(int(s) for s in size) if isinstance(size, (tuple, list)) else (int(size), int(size))

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", 0) or 0)

    def build(self, num_classes: int | None = None, img_size: int | tuple[int, int] | None = None,
              **overrides: Any) -> nn.Module:
        """The model with these weights.

        ``num_classes=None``: the checkpoint's own model and head (evaluation, inspection, few-shot features).
        ``num_classes=K``: the paper's transfer set-up (Section 3.2): same backbone, pre-logits and the
        masked-patch head removed, a new zero-initialised ``K``-way head. ``img_size`` moves the model to another
        resolution (position embeddings interpolated); ``overrides`` change other config fields (dropout, ...).
        """
        fields = {**self.config, **overrides}
        if img_size is not None:
            fields["img_size"] = img_size
        if num_classes is None:
            return self._load(fields)
        return _transfer(self._load(dict(self.config)), fields, num_classes, source=self.ref)


def kind_of(ref: Ref) -> str:
    """The kind of a reference: the single dispatch point that every new kind plugs into."""
    text = str(ref)
    for prefix, kind in PREFIX_KINDS.items():
        if text.startswith(prefix):
            return kind
    path = Path(text).expanduser()
    if path.is_dir():
        return "run_dir"
    if not path.exists():
        raise CheckpointError(f"{text}: no such file or directory (expected {KNOWN})")
    kind = _file_kind(path)
    if kind is None:
        raise CheckpointError(f"{text}: not a weights file vitlab reads (expected {KNOWN})")
    return kind


def resolve(ref: Ref, *, model_name: str | None = None) -> WeightsRef:
    """Read what ``ref`` points at; unknown or unreadable references are a one-line CheckpointError naming it.

    ``model_name`` fixes the architecture of an official ``.npz`` (its keys say the sizes but not, e.g., the
    GELU); the other kinds carry their full config and ignore it.
    """
    kind = kind_of(ref)
    try:
        return RESOLVERS[kind](str(ref), model_name)
    except VitlabError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{ref}: cannot read these weights ({type(error).__name__}: {error})") from None


def resolve_file(path: Path, ref: str, model_name: str | None = None, kind: str | None = None) -> WeightsRef:
    """A local weights file (ours or official), reported under ``ref`` and ``kind`` (default: the file's)."""
    file_kind = _file_kind(path)
    if file_kind == "npz":
        return _npz_ref(path, ref, model_name, kind or "npz")
    if file_kind == "safetensors":
        return _safetensors_ref(path, ref, kind or "safetensors")
    raise CheckpointError(f"{ref}: {path} is neither a vitlab .safetensors nor an official .npz")


# ---- one function per kind ---------------------------------------------------------------------------------
def _resolve_safetensors(ref: str, model_name: str | None) -> WeightsRef:
    return _safetensors_ref(Path(ref).expanduser(), ref, "safetensors")


def _resolve_run_dir(ref: str, model_name: str | None) -> WeightsRef:
    root = Path(ref).expanduser()
    for candidate in RUN_DIR_CANDIDATES:
        if (root / candidate).is_file():
            return _safetensors_ref(root / candidate, ref, "run_dir")
    raise CheckpointError(f"{ref}: a directory without checkpoints/best.safetensors or checkpoints/last.safetensors")


def _resolve_npz(ref: str, model_name: str | None) -> WeightsRef:
    return _npz_ref(Path(ref).expanduser(), ref, model_name, "npz")


def _resolve_timm(ref: str, model_name: str | None) -> WeightsRef:
    """``timm:NAME[@FILE]``: converted once per (name, timm version, weights) into the cache, then reused."""
    name, _, file = ref[len("timm:"):].partition("@")
    if not name:
        raise CheckpointError(f"{ref}: give a timm model name, e.g. timm:vit_base_patch16_224.augreg_in21k")
    if file and not Path(file).expanduser().is_file():
        raise CheckpointError(f"{ref}: no such weights file {file}")
    fields = {
        "timm": name,
        "timm_version": package_metadata.version("timm"),
        # Without a file, timm's own (tagged) weights for this name and version decide the content.
        "weights_sha256": file_sha256(Path(file).expanduser()) if file else None,
    }
    path = cached_file("timm", name, fields, ".safetensors", lambda tmp: _convert_timm(ref, name, file, tmp))
    return _safetensors_ref(path, ref, "timm")


def _resolve_hf(ref: str, model_name: str | None) -> WeightsRef:
    """``hf:NAME``: a Hugging Face ViT from the hub (its cache) or a local directory, converted in memory."""
    # transformers takes seconds to import; only hf: references pay for it.
    from transformers import AutoConfig, ViTForImageClassification, ViTModel

    name = ref[len("hf:"):]
    local = Path(name).expanduser()
    source = str(local) if local.is_dir() else name
    try:
        hf_config = AutoConfig.from_pretrained(source)
        with_head = any(arch.endswith("ForImageClassification") for arch in (hf_config.architectures or []))
        hf_model = (ViTForImageClassification if with_head else ViTModel).from_pretrained(source)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{ref}: transformers could not load it ({_detail(error)})") from None
    ours = from_hf(hf_model).eval()
    labels = getattr(hf_config, "id2label", None) or {}
    classes: tuple[str, ...] | int | None = ours.config.num_classes or None
    if with_head and len(labels) == ours.config.num_classes:
        classes = tuple(str(labels[i]) for i in range(len(labels)))
    state = {key: value.detach() for key, value in ours.state_dict().items()}

    def load(fields: dict[str, Any]) -> nn.Module:
        model = build_from_config("vit", fields)
        load_weights(model, state, source=ref)
        return model

    config = config_dict(ours)
    return WeightsRef(ref, "hf", "vit", config, None, classes,
                      _hf_preprocessing(source, config) or _default_preprocessing(config), load)


def _resolve_remote(ref: str, model_name: str | None) -> WeightsRef:
    """``pretrained:MODEL.TAG`` and URLs: fetched once into the download cache, then read as the local file."""
    path, entry = fetch_reference(ref)
    return resolve_file(path, ref, model_name, "pretrained" if entry is not None else "url")


PREFIX_KINDS: dict[str, str] = {"timm:": "timm", "hf:": "hf", PRETRAINED_PREFIX: "pretrained",
                                **{prefix: "url" for prefix in URL_PREFIXES}}
RESOLVERS: dict[str, Callable[[str, str | None], WeightsRef]] = {
    "safetensors": _resolve_safetensors,
    "run_dir": _resolve_run_dir,
    "npz": _resolve_npz,
    "timm": _resolve_timm,
    "hf": _resolve_hf,
    "pretrained": _resolve_remote,
    "url": _resolve_remote,
}


# ---- helpers -----------------------------------------------------------------------------------------------
def _file_kind(path: Path) -> str | None:
    """``npz`` or ``safetensors`` by suffix, else by the first bytes (a zip archive, or safetensors' header)."""
    suffix = path.suffix.lower()
    if suffix in (".npz", ".safetensors"):
        return suffix[1:]
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    if head[:2] == b"PK":
        return "npz"
    if len(head) == 9 and head[8:9] == b"{":  # 8-byte little-endian header length, then the JSON header
        return "safetensors"
    return None


def _safetensors_ref(path: Path, ref: str, kind: str) -> WeightsRef:
    meta = read_metadata(path)
    if "vitlab.config" not in meta or "vitlab.family" not in meta:
        raise CheckpointError(f"{ref}: {path} has no vitlab config in its metadata (not written by vitlab)")
    try:
        config = json.loads(meta["vitlab.config"])
        classes_list = json.loads(meta[CLASSES_KEY]) if CLASSES_KEY in meta else None
        preprocessing = json.loads(meta[PREPROCESSING_KEY]) if PREPROCESSING_KEY in meta else None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{ref}: {path} holds unreadable vitlab metadata ({error})") from None
    family = meta["vitlab.family"]
    classes = tuple(classes_list) if classes_list else (int(config.get("num_classes", 0) or 0) or None)

    def load(fields: dict[str, Any]) -> nn.Module:
        state, _ = read_safetensors(path)
        model = build_from_config(family, fields)
        load_weights(model, state, source=str(path))
        return model

    return WeightsRef(ref, kind, family, config, path, classes, preprocessing or _default_preprocessing(config), load)


def _npz_ref(path: Path, ref: str, model_name: str | None, kind: str) -> WeightsRef:
    official.require_npz_archive(path, ref)
    try:
        with np.load(path, allow_pickle=False) as archive:
            family, config = official.config_from_npz(_UnprefixedArrays(archive), str(ref))
    except CheckpointError as error:
        if str(error).startswith(str(ref)):
            raise
        raise CheckpointError(f"{ref}: {error}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{ref}: not a readable .npz checkpoint ({error})") from None
    if model_name is not None:
        # The name fixes the architecture; the checkpoint still decides head, resolution and pooling.
        kept = {k: config[k] for k in ("num_classes", "img_size", "in_chans", "representation_size", "classifier")
                if k in config}
        with torch.device("meta"):
            named = create_model(model_name, **kept)
        family, config = model_family(named), config_dict(named)

    def load(fields: dict[str, Any]) -> nn.Module:
        model = build_from_config(family, fields)
        load_weights(model, official.state_dict_from_npz(model, official.read_npz(path), str(path)), source=str(path))
        return model

    return WeightsRef(ref, kind, family, config, path, int(config.get("num_classes", 0) or 0) or None,
                      _default_preprocessing(config), load)


class _UnprefixedArrays(Mapping):
    """An open ``.npz`` seen without the training-era prefix; an array is read only when asked for."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive
        files = list(archive.files)
        self.prefix = next((p for p in official.PREFIXES[1:] if any(f.startswith(p) for f in files)), "")
        self.keys_ = [f[len(self.prefix):] for f in files if f.startswith(self.prefix)]

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.keys_:
            raise KeyError(key)
        return self.archive[self.prefix + key]

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)

    def __contains__(self, key: object) -> bool:
        return key in self.keys_


def _convert_timm(ref: str, name: str, file: str, out: Path) -> None:
    """Create timm's model with its weights, convert it to ours and write it (with timm's preprocessing)."""
    # timm takes seconds to import; only timm: references that miss the cache pay for it.
    import timm

    try:
        if file:  # a local state dict: the head takes the file's class count (0 when it has no head)
            state = timm.models.load_state_dict(str(Path(file).expanduser()))
            classifier = timm.models.get_pretrained_cfg_value(name, "classifier") or "head"
            head = state.get(f"{classifier}.weight")
            timm_model = timm.create_model(name, pretrained=False, num_classes=0 if head is None else head.shape[0])
            timm_model.load_state_dict(state)
        else:
            timm_model = timm.create_model(name, pretrained=True)
    except Exception as error:  # timm raises RuntimeError / HF hub errors when weights cannot be found or fit
        raise CheckpointError(f"{ref}: timm could not load it ({_detail(error)})") from None
    ours = from_timm(timm_model)
    preprocessing = _timm_preprocessing(dict(getattr(timm_model, "pretrained_cfg", None) or {}), ours.config.in_chans)
    save_model(ours, out, classes=None if file else _timm_class_names(timm_model), preprocessing=preprocessing)


def _timm_class_names(timm_model: nn.Module) -> Sequence[str] | None:
    """ImageNet label names when timm knows the head's label set (timm ships them), else None."""
    from timm.data import ImageNetInfo, infer_imagenet_subset  # timm is imported by the caller already

    subset = infer_imagenet_subset(timm_model)
    if subset is None:
        return None
    names = ImageNetInfo(subset).label_names()
    return list(names) if len(names) == getattr(timm_model, "num_classes", -1) else None


def _hf_preprocessing(source: str, config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A Hugging Face image processor's mean, std and size in vitlab's keys, when the model ships one."""
    from transformers import AutoImageProcessor  # imported already by _resolve_hf

    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        return None
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        return None
    out = _default_preprocessing(config)
    size = getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:
        out["img_size"] = [int(size["height"]), int(size["width"])]
    out.update(mean=[float(v) for v in mean], std=[float(v) for v in std])
    return out


def _detail(error: BaseException) -> str:
    """One line of a library's multi-line error: torch's "Error(s) in loading state_dict for X:" header is
    followed by the line that names the keys, which is the one worth showing."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]


def _default_preprocessing(config: Mapping[str, Any]) -> dict[str, Any]:
    """vitlab's and the official code's evaluation input: bilinear resize to the model's size, pixels to [-1, 1]
    (mean 0.5, std 0.5). The same keys as ``vitlab.data.transforms`` evaluation uses (img_size, resize, mean,
    std, channels, in_chans), written here because the data layer sits above this one."""
    chans = int(config.get("in_chans", 3))
    size = config.get("img_size", 224)
    size = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
    return {"img_size": size, "resize": "bilinear", "mean": [0.5] * chans, "std": [0.5] * chans,
            "channels": chans, "in_chans": chans}


def _timm_preprocessing(pretrained_cfg: Mapping[str, Any], in_chans: int) -> dict[str, Any] | None:
    """timm's pretrained_cfg in the same keys (plus timm's crop settings, which its evaluation applies)."""
    if "mean" not in pretrained_cfg or "std" not in pretrained_cfg:
        return None
    size = list(pretrained_cfg.get("input_size", (in_chans, 224, 224)))[1:]
    out = {"img_size": [int(v) for v in size], "resize": pretrained_cfg.get("interpolation", "bilinear"),
           "mean": [float(v) for v in pretrained_cfg["mean"]], "std": [float(v) for v in pretrained_cfg["std"]],
           "channels": in_chans, "in_chans": in_chans}
    out.update({key: pretrained_cfg[key] for key in ("crop_pct", "crop_mode") if key in pretrained_cfg})
    return out


def _transfer(pretrained: nn.Module, fields: dict[str, Any], num_classes: int, source: str) -> nn.Module:
    """The paper's fine-tuning start (Section 3.2): backbone copied, pre-logits dropped, new zero head."""
    fields.update(num_classes=num_classes)
    if "representation_size" in fields:
        fields["representation_size"] = None  # the tanh pre-logits layer of pre-training goes
    if "mpp_classes" in fields:
        fields["mpp_classes"] = 0  # so does the masked-patch head
    target = build_from_config(model_family(pretrained), fields)
    transferable = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(PRETRAINING_ONLY)}
    load_weights(target, transferable, source=source, strict=False)
    head_keys = {key for key in target.state_dict() if key.startswith(PRETRAINING_ONLY)}
    missing = sorted(set(target.state_dict()) - set(transferable) - head_keys)
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(f"{source} does not provide {shown} for fine-tuning")
    return target
