"""Typed run configuration: YAML presets plus ``key=value`` overrides, validated before anything runs.

A run is described by one :class:`RunConfig` made of small sections (``model``, ``data``, ``optim``, ``train``,
``distributed``, ``sweep``). It comes from, in order:

1. the dataclass defaults,
2. a preset (``src/vitlab/configs/NAME.yaml``, found by name) or a YAML file; a file may name ``base: OTHER``
   to start from another preset and change only what differs,
3. ``key=value`` overrides from the command line or from Python.

Keys are dotted (``optim.lr=0.01``); a field name that exists in exactly one section may be given alone
(``lr=0.01``, ``steps=200``). ``model.<field>`` sets any field of the model family's config (``model.depth=6``),
``data.options.<name>`` passes an option to the data source (``data.options.root=/data/pets``). Values are read
as YAML scalars (``1e-3``, ``true``, ``null``, ``[0.001, 0.01]``) and checked against the field's type.

Anything unknown or out of range raises :class:`vitlab.errors.ConfigError` naming the key, the value and what
was expected, so the CLI can print one line and exit 2.

Python use, no YAML needed::

    cfg = RunConfig().override(["model.name=vit_ti4", "data.img_size=28", "steps=100", "batch_size=128"])
    cfg = load_config("fmnist-vit-tiny", ["steps=50"])
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Union

import yaml

from vitlab.errors import ConfigError, VitlabError

PRESET_PACKAGE = "vitlab.configs"


@dataclass
class ModelSection:
    """Which network to train. Fields other than ``name`` and ``init_from`` go to the model family's config."""

    name: Optional[str] = "vit_ti16"  # registry name (vit_b16, bit_r50x1, r50_vit_b16, ...)
    # Fine-tuning: our .safetensors, an official .npz, or a run directory (its checkpoints/best.safetensors).
    init_from: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"depth": 6, "drop_path": 0.1}


@dataclass
class DataSection:
    dataset: str = "fashion_mnist"  # a vitlab.data source name
    options: dict[str, Any] = field(default_factory=dict)  # source options, e.g. {"root": "/data/pets"}
    train_split: str = "train"
    test_split: Optional[str] = "test"  # None: no test evaluation
    img_size: Optional[int] = None  # None: the model's default resolution
    in_chans: Optional[int] = None  # None: the source's channels
    augment: str = "none"  # a vitlab.data augmentation level
    num_workers: int = 0
    # Share of the training split held out as a dev split (selection / best checkpoint). None: the paper's
    # fraction for the dataset during a fine-tuning sweep (recipes.DEV_FRACTION), otherwise no dev split.
    dev_fraction: Optional[float] = None
    exclusions: Optional[str] = None  # file of training indices to drop (vitlab dedup); pre-training only
    eval_batch_size: int = 256


@dataclass
class OptimSection:
    """Optimiser and learning-rate schedule.

    ``weight_decay`` is decoupled and multiplied by the current learning rate, as in torch's AdamW and in the
    Flax optimiser of the paper's code: each step does ``w <- w - lr_t * weight_decay * w`` on weight matrices
    only. Table 3's values (0.1 JFT, 0.03 ImageNet-21k, 0.3 ImageNet) are used as they are. (big_vision's later
    configs scale decay by the schedule only; their ``wd`` equals ``lr * weight_decay`` here.)
    """

    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3  # peak learning rate, reached after warm-up
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # SGD only
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = 0
    end_lr: float = 0.0  # where linear decay ends (the paper's ImageNet-21k runs: 1e-5)
    clip_norm: Optional[float] = 1.0  # clip the global gradient norm; None: no clipping


@dataclass
class TrainSection:
    steps: Optional[int] = None  # optimiser steps; give this or `epochs`
    epochs: Optional[float] = None  # converted to steps from the training-set size and batch size
    batch_size: int = 4096  # the effective (global) batch of the recipe
    micro_batch_size: Optional[int] = None  # per process per forward pass; None: batch_size / world size
    # classify: supervised classification (``loss``, ``label_smoothing``); mpp: masked patch prediction, the
    # paper's self-supervised pre-training (Section 4.6; the model gets ``mpp_classes`` automatically and the
    # reported accuracies are those of predicting the corrupted patches' mean colours).
    objective: Literal["classify", "mpp"] = "classify"
    loss: Literal["softmax", "sigmoid"] = "softmax"
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # Polyak / EMA averaging of the weights; 0 = off (paper's Table 2: 0.9999)
    # auto: bf16 on GPUs that have it, fp16 (with loss scaling) on older GPUs, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50
    eval_every: int = 0  # evaluate on the dev (or test) split every N steps; 0: only at the end
    checkpoint_every: int = 500  # 0: only at the end
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; bit-exact resume on GPU)
    # CPU threads for torch's kernels; null: torch's default (all cores). On a busy shared machine fewer
    # threads than cores avoids OpenMP threads waiting on each other (1 can be several times faster).
    num_threads: Optional[int] = None


@dataclass
class DistributedSection:
    strategy: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPU, gloo on CPU
    timeout_minutes: int = 30


@dataclass
class SweepSection:
    """A grid over config keys, e.g. ``{"lr": [0.001, 0.003, 0.01, 0.03]}`` (Table 4's learning rates).

    Each value trains one sub-run on train minus the dev split; the best dev accuracy wins. With ``refit``
    the winner is trained again on the whole training split and its test accuracy is reported (the paper,
    Appendix B.1.1); without, the winning sub-run's own weights are tested.
    """

    grid: dict[str, list[Any]] = field(default_factory=dict)
    refit: bool = True


@dataclass
class RunConfig:
    task: Literal["pretrain", "finetune"] = "pretrain"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    sweep: SweepSection = field(default_factory=SweepSection)

    # ---- building ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, tree: Mapping[str, Any], *, origin: str = "config") -> "RunConfig":
        """A validated config from a nested mapping (what a YAML file holds)."""
        cfg = cls()
        for key, value in _flatten(tree):
            _assign(cfg, key, value, origin)
        cfg.validate()
        return cfg

    def override(self, overrides: Iterable[str] | Mapping[str, Any] = ()) -> "RunConfig":
        """A new, validated config with ``key=value`` strings (or a ``{key: value}`` mapping) applied."""
        cfg = _copy(self)
        for key, value in parse_overrides(overrides):
            _assign(cfg, key, value, "override")
        cfg.validate()
        return cfg

    # ---- reading ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (model overrides flattened into ``model``); ``from_dict`` reads it back."""
        tree = dataclasses.asdict(self)
        model = tree["model"]
        overrides = model.pop("overrides")
        model.update(overrides)
        tree["optim"]["betas"] = list(tree["optim"]["betas"])
        return tree

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def get(self, key: str) -> Any:
        """The value at a dotted key (aliases allowed): ``cfg.get("lr")``."""
        section, name, rest = _resolve_key(key, "get")
        if not section:
            return getattr(self, name)
        target = getattr(self, section)
        if name in _OPEN_DICTS.get(section, {}):
            container = getattr(target, name)
            return container.get(rest) if rest else container
        if section == "model" and name not in _field_names(ModelSection):
            return target.overrides.get(name)
        return getattr(target, name)

    def accumulation_steps(self, world_size: int = 1) -> int:
        """Micro-batches per optimiser step and process, so that ``batch_size`` is the effective batch."""
        micro = self.micro_batch_size(world_size)
        per_step = micro * world_size
        if self.train.batch_size % per_step:
            raise ConfigError(
                f"train.batch_size={self.train.batch_size} is not divisible by train.micro_batch_size={micro} "
                f"x {world_size} process(es); choose a micro batch that divides {self.train.batch_size // world_size}"
            )
        return self.train.batch_size // per_step

    def micro_batch_size(self, world_size: int = 1) -> int:
        if self.train.micro_batch_size is not None:
            return self.train.micro_batch_size
        if self.train.batch_size % world_size:
            raise ConfigError(
                f"train.batch_size={self.train.batch_size} is not divisible by the {world_size} processes"
            )
        return self.train.batch_size // world_size

    # ---- checking ---------------------------------------------------------------------------------------
    def validate(self, check_model: bool = True) -> "RunConfig":
        """Raise ConfigError on the first value out of range; also builds the model on the meta device."""
        o, t, d = self.optim, self.train, self.data
        _require(o.lr > 0 and math.isfinite(o.lr), "optim.lr", o.lr, "a positive number")
        _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
        _require(all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "two numbers in [0, 1)")
        _require(o.eps > 0, "optim.eps", o.eps, "a positive number")
        _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "a number in [0, 1)")
        _require(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "an integer >= 0")
        _require(0 <= o.end_lr <= o.lr, "optim.end_lr", o.end_lr, f"a number in [0, optim.lr={o.lr}]")
        _require(o.clip_norm is None or o.clip_norm > 0, "optim.clip_norm", o.clip_norm, "a positive number or null")
        if t.steps is not None and t.epochs is not None:
            raise ConfigError("train.steps and train.epochs are both set; give only one")
        if t.steps is None and t.epochs is None:
            raise ConfigError("neither train.steps nor train.epochs is set; give one (e.g. train.steps=1000)")
        _require(t.steps is None or t.steps > 0, "train.steps", t.steps, "a positive integer")
        _require(t.epochs is None or t.epochs > 0, "train.epochs", t.epochs, "a positive number")
        if t.steps is not None and o.warmup_steps > t.steps:
            raise ConfigError(f"optim.warmup_steps={o.warmup_steps} is longer than train.steps={t.steps}")
        _require(t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
        _require(
            t.micro_batch_size is None or 0 < t.micro_batch_size <= t.batch_size,
            "train.micro_batch_size", t.micro_batch_size, f"a positive integer <= train.batch_size={t.batch_size}",
        )
        if t.micro_batch_size is not None and t.batch_size % t.micro_batch_size:
            raise ConfigError(
                f"train.micro_batch_size={t.micro_batch_size} does not divide train.batch_size={t.batch_size}"
            )
        _require(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "a number in [0, 1)")
        if t.objective == "mpp" and self.task != "pretrain":
            raise ConfigError("train.objective=mpp is a pre-training objective; fine-tune its checkpoint with "
                              "train.objective=classify")
        _require(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "a number in [0, 1) (0 = off)")
        if self.distributed.strategy == "fsdp" and t.ema_decay > 0:
            raise ConfigError("train.ema_decay needs distributed.strategy=ddp (EMA of FSDP shards is not supported)")
        _require(t.num_threads is None or t.num_threads > 0, "train.num_threads", t.num_threads,
                 "a positive integer or null")
        _require(t.log_every > 0, "train.log_every", t.log_every, "a positive integer")
        _require(t.eval_every >= 0, "train.eval_every", t.eval_every, "an integer >= 0")
        _require(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every, "an integer >= 0")
        _require(
            t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
            "train.device", t.device, "auto, cpu, cuda or cuda:N",
        )
        _require(d.img_size is None or d.img_size > 0, "data.img_size", d.img_size, "a positive integer")
        _require(d.in_chans is None or d.in_chans > 0, "data.in_chans", d.in_chans, "a positive integer")
        _require(d.num_workers >= 0, "data.num_workers", d.num_workers, "an integer >= 0")
        _require(d.eval_batch_size > 0, "data.eval_batch_size", d.eval_batch_size, "a positive integer")
        _require(
            d.dev_fraction is None or 0 <= d.dev_fraction < 1, "data.dev_fraction", d.dev_fraction, "a number in [0, 1)"
        )
        _require(self.distributed.timeout_minutes > 0, "distributed.timeout_minutes",
                 self.distributed.timeout_minutes, "a positive integer")
        for name, instead in _DERIVED_MODEL_FIELDS.items():
            if name in self.model.overrides:
                raise ConfigError(f"model.{name} is set by the run; use {instead} instead")
        for key, values in self.sweep.grid.items():
            _check_sweep_entry(self, key, values)
        if check_model:
            self._check_model()
        return self

    def _check_model(self) -> None:
        """Build the model on the meta device (no memory, no time) so bad names / sizes fail before training."""
        if self.model.name is None:
            return  # the architecture comes from init_from; checked when the file is read
        import torch

        from vitlab.models.registry import create_model

        kwargs = dict(self.model.overrides)
        if self.data.img_size is not None:
            kwargs["img_size"] = self.data.img_size
        if self.data.in_chans is not None:
            kwargs["in_chans"] = self.data.in_chans
        try:
            with torch.device("meta"):
                model = create_model(self.model.name, num_classes=kwargs.pop("num_classes", 10), **kwargs)
        except VitlabError as error:
            where = "data.img_size" if "divisible" in str(error) else "model"
            raise ConfigError(f"{where}: {error}") from None
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model: {error}") from None
        del model


# ---- presets ------------------------------------------------------------------------------------------------
def list_presets() -> list[str]:
    """Names of the packaged presets (``vitlab pretrain --config NAME``)."""
    root = resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    root = resources.files(PRESET_PACKAGE)
    entry = root / f"{name}.yaml"
    if not entry.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=4, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; presets: {', '.join(list_presets())}"
        raise ConfigError(f"--config {name!r} is neither a file nor a preset{hint}")
    return entry.read_text()


def load_config(preset_or_path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()) -> RunConfig:
    """A validated config from a preset name or a YAML file, then ``key=value`` overrides."""
    tree = _read_tree(str(preset_or_path), seen=())
    cfg = RunConfig()
    origin = str(preset_or_path)
    for key, value in _flatten(tree):
        _assign(cfg, key, value, origin)
    return cfg.override(overrides)


def _read_tree(ref: str, seen: tuple[str, ...], relative_to: Path | None = None) -> dict[str, Any]:
    """The merged mapping of a preset / file and its ``base`` chain."""
    if ref in seen:
        raise ConfigError(f"config base chain loops: {' -> '.join(seen + (ref,))}")
    path = Path(ref) if relative_to is None else (relative_to / ref)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, here = path.read_text(), path.parent
    elif Path(ref).is_file():
        text, here = Path(ref).read_text(), Path(ref).parent
    elif ref.endswith((".yaml", ".yml")) and "/" in ref:
        raise ConfigError(f"config file {ref} does not exist")
    else:
        text, here = preset_text(Path(ref).stem if ref.endswith((".yaml", ".yml")) else ref), None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{ref}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{ref}: expected a mapping of config sections, got {type(tree).__name__}")
    tree.pop("meta", None)  # a preset's description for `vitlab presets` (reproduces, expected_time): not config
    base = tree.pop("base", None)
    if base is None:
        return tree
    parent = _read_tree(str(base), seen + (ref,), here if here and (here / str(base)).is_file() else None)
    return _deep_merge(parent, tree)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and key != "grid":
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


# ---- keys ---------------------------------------------------------------------------------------------------
_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "train": TrainSection,
    "distributed": DistributedSection,
    "sweep": SweepSection,
}
_TOP_LEVEL = ("task", "seed")
# Model fields the run derives from the data; setting them under model.* would be silently overwritten.
_DERIVED_MODEL_FIELDS = {
    "num_classes": "the dataset's classes",
    "img_size": "data.img_size",
    "in_chans": "data.in_chans",
}
# Fields that are free-form mappings: a dotted key below them is an entry, not a field.
_OPEN_DICTS: dict[str, set[str]] = {"data": {"options"}, "sweep": {"grid"}}


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _aliases() -> dict[str, list[str]]:
    """Bare field name -> every dotted key that has it (an alias works when the list has one entry)."""
    table: dict[str, list[str]] = {}
    for section, cls in _SECTIONS.items():
        for name in _field_names(cls):
            if name == "overrides":
                continue
            table.setdefault(name, []).append(f"{section}.{name}")
    return table


def all_keys() -> list[str]:
    """Every fixed dotted key (for error messages and docs)."""
    keys = list(_TOP_LEVEL)
    for section, cls in _SECTIONS.items():
        keys += [f"{section}.{name}" for name in _field_names(cls) if name != "overrides"]
    return keys


def _resolve_key(key: str, origin: str) -> tuple[str, str, str]:
    """``(section, field, rest)`` for a dotted or alias key; section "" for top-level fields."""
    if key in _TOP_LEVEL:
        return "", key, ""
    head, _, tail = key.partition(".")
    if head in _SECTIONS and tail:
        name, _, rest = tail.partition(".")
        cls = _SECTIONS[head]
        if head == "model" and name not in _field_names(cls):
            if rest:
                raise ConfigError(f"{origin}: unknown key {key!r} (model options are one level: model.<field>)")
            return "model", name, ""  # a model-family field, checked when the model is built
        if name not in _field_names(cls) or name == "overrides":
            close = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys in {head}: " + ", ".join(
                f"{head}.{n}" for n in _field_names(cls) if n != "overrides")
            raise ConfigError(f"{origin}: unknown key {key!r}{hint}")
        if rest and name not in _OPEN_DICTS.get(head, set()):
            raise ConfigError(f"{origin}: unknown key {key!r} ({head}.{name} has no sub-keys)")
        return head, name, rest
    if head in _SECTIONS:
        raise ConfigError(f"{origin}: {key!r} is a section; give a mapping or {key}.<field>=value")
    if not tail:
        matches = _aliases().get(key, [])
        if len(matches) == 1:
            return _resolve_key(matches[0], origin)
        if len(matches) > 1:
            raise ConfigError(f"{origin}: key {key!r} is ambiguous; write one of {', '.join(matches)}")
    if not tail and key in _model_fields():
        raise ConfigError(f"{origin}: unknown key {key!r}; model options take the prefix: model.{key}")
    close = difflib.get_close_matches(key, all_keys() + list(_aliases()), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see docs/training.md for the keys"
    raise ConfigError(f"{origin}: unknown key {key!r}{hint}")


def _model_fields() -> set[str]:
    """Fields of the model families' configs (for a hint when ``model.`` is left out)."""
    names: set[str] = set()
    try:
        from vitlab.models.vit import ViTConfig

        names |= {f.name for f in dataclasses.fields(ViTConfig)}
        from vitlab.models.resnet import BiTConfig

        names |= {f.name for f in dataclasses.fields(BiTConfig)}
    except ImportError:
        pass
    return names


def canonical_key(key: str) -> str:
    """``lr`` -> ``optim.lr``; raises ConfigError for an unknown key."""
    section, name, rest = _resolve_key(key, "key")
    return ".".join(part for part in (section, name, rest) if part)


def _assign(cfg: RunConfig, key: str, value: Any, origin: str) -> None:
    section, name, rest = _resolve_key(key, origin)
    if not section:
        _set_typed(cfg, name, value, key)
        return
    target = getattr(cfg, section)
    if section == "model" and name not in _field_names(ModelSection):
        if isinstance(value, str):  # model fields are numbers, booleans or names: "6" from Python means 6
            value = _parse_scalar(value)
        target.overrides[name] = _plain(value, key)
        return
    if name in _OPEN_DICTS.get(section, set()):
        container = getattr(target, name)
        if rest:
            container[rest] = _plain(value, key) if section != "sweep" else _as_list(value, key)
        else:
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: {key} must be a mapping, got {value!r}")
            setattr(target, name, {
                str(k): (_as_list(v, f"{key}.{k}") if section == "sweep" else _plain(v, f"{key}.{k}"))
                for k, v in value.items()
            })
        return
    _set_typed(target, name, value, f"{section}.{name}")


def _set_typed(obj: Any, name: str, value: Any, key: str) -> None:
    hints = typing.get_type_hints(type(obj))
    setattr(obj, name, _coerce(value, hints[name], key))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to the type ``hint`` or a ConfigError naming key, value and expected type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, args))}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        if isinstance(value, int):
            return value
        number = _number(value)
        if number is not None and math.isfinite(number) and float(number).is_integer():
            return int(number)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        number = _number(value)
        if number is None:
            raise ConfigError(f"{key}={value!r}: expected a number")
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r}: expected a string")
    if origin is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else None
        if items is None or (args and args[-1] is not Ellipsis and len(items) != len(args)):
            raise ConfigError(f"{key}={value!r}: expected a list of {len(args)} values")
        kinds = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
        return tuple(_coerce(item, kind, key) for item, kind in zip(items, kinds))
    if origin is list:
        return [_coerce(item, args[0], key) if args else item for item in _as_list(value, key)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return dict(value)
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _plain(value: Any, key: str) -> Any:
    """Free-form values (model fields, source options) must be YAML-representable scalars or lists."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, key) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, key) for k, v in value.items()}
    raise ConfigError(f"{key}={value!r}: expected a number, string, boolean, list or null")


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and "," in value:
        return [_parse_scalar(part.strip()) for part in value.split(",") if part.strip()]
    return [value]


def _check_sweep_entry(cfg: RunConfig, key: str, values: list[Any]) -> None:
    """Every value a sweep will try must itself be a valid override."""
    canonical = canonical_key(key)
    if not values:
        raise ConfigError(f"sweep.grid.{key} is empty; give at least one value")
    for value in values:
        probe = _copy(cfg)
        probe.sweep = SweepSection()
        _assign(probe, canonical, value, f"sweep.grid.{key}")
        probe.validate(check_model=False)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mapping -> dotted ``(key, value)`` pairs; free-form mappings stay whole."""
    pairs: list[tuple[str, Any]] = []
    for raw_key, value in tree.items():
        key = f"{prefix}{raw_key}"
        section = key.split(".")[0]
        is_open = key.count(".") == 1 and key.split(".")[1] in _OPEN_DICTS.get(section, set())
        if isinstance(value, Mapping) and not is_open and (not prefix and key in _SECTIONS):
            pairs.extend(_flatten(value, f"{key}."))
        elif isinstance(value, Mapping) and not prefix and key not in _SECTIONS:
            raise ConfigError(f"unknown config section {key!r}; sections: {', '.join(_SECTIONS)}")
        else:
            pairs.append((key, value))
    return pairs


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=0.01)")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has no key")
        pairs.append((key, _parse_scalar(text.strip()) if text.strip() else None))
    return pairs


def _copy(cfg: RunConfig) -> RunConfig:
    import copy

    return copy.deepcopy(cfg)


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid; expected {expected}")
