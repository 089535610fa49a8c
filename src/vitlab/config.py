"""Typed run configuration: YAML presets plus ``key=value`` overrides, validated before anything runs.

A run is described by one :class:`RunConfig` made of small sections (``model``, ``data``, ``optim``, ``train``,
``distributed``, ``sweep``): pydantic models whose fields declare each type, range and choice once. A config
comes from, in order:

1. the defaults of the sections,
2. a preset (``src/vitlab/configs/NAME.yaml``, found by name) or a YAML file; a file may name ``base: OTHER``
   to start from another preset and change only what differs,
3. ``key=value`` overrides from the command line or from Python.

Keys are dotted (``optim.lr=0.01``); a field name that exists in exactly one section may be given alone
(``lr=0.01``, ``steps=200``). ``model.name`` is a registry variant that expands to a typed spec
(:mod:`vitlab.models.specs`); ``model.<field>`` changes one field of it (``model.depth=6``). A ``model.name``
resets the model fields set before it (by a base preset, an earlier file or the preset under the command line);
fields given with it (same file, same command line) apply on top. ``data.options.<name>`` passes an option to
the data source. Values are read as YAML scalars (``1e-3``, ``true``, ``null``, ``[0.001, 0.01]``).

Anything unknown or out of range raises :class:`vitlab.errors.ConfigError`, one line naming the key, the value
and what was expected (unknown keys get close-name suggestions), so the CLI can print it and exit 2.

Python use, no YAML needed::

    cfg = RunConfig().override(["model.name=vit_ti4", "data.img_size=28", "steps=100", "batch_size=128"])
    cfg = load_config("fmnist-vit-tiny", ["steps=50"])
"""
from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import to_jsonable_python

from vitlab.errors import ConfigError, VitlabError
from vitlab.models.registry import DEFAULT_IMG_SIZE
from vitlab.models.specs import (
    DERIVED_FIELDS, SPECS, BaseSpec, Float, Int, PositiveInt, Rate, all_field_names, build_spec, canonical,
    check_field, one_line, resolve_spec,
)

PRESET_PACKAGE = "vitlab.configs"
Positive = Annotated[Float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[Float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[Int, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class ModelSection(_Section):
    """Which network to train: a registry variant plus the fields changed on top of it.

    ``spec`` is the resolved, typed network (family and every field). With ``init_from`` the checkpoint carries
    the architecture: ``name`` may be null (taken from the checkpoint); a name or a shape field (depth, width ...)
    must agree with the checkpoint (checked when it is read); other fields (dropout, drop_path ...) apply to it.
    """

    name: Optional[str] = "vit_ti16"  # registry name (vit_b16, bit_r50x1, r50_vit_b16, ViT-B/16, ...)
    # Fine-tuning: our .safetensors, an official .npz, a run directory, or timm:NAME.
    init_from: Optional[str] = None
    overrides: dict[str, Any] = Field(default_factory=dict)  # fields that differ from the variant's

    @model_validator(mode="before")
    @classmethod
    def _fields_go_to_overrides(cls, data: Any) -> Any:
        """``{name: vit_ti4, depth: 6}`` (a preset's ``model:`` mapping) -> ``overrides={"depth": 6}``."""
        if isinstance(data, Mapping):
            data = dict(data)
            data.pop("family", None)  # recorded by to_dict; the name and fields decide it
            extra = {k: data.pop(k) for k in list(data) if k not in cls.model_fields}
            data["overrides"] = {**(data.get("overrides") or {}), **extra}
        return data

    @property
    def spec(self) -> Optional[BaseSpec]:
        """The resolved spec (:mod:`vitlab.models.specs`); None with ``init_from`` (the checkpoint has it)."""
        return resolve_spec(self.name, self.overrides) if self.name and not self.init_from else None

    def _resolve(self) -> None:
        """Canonical name, typed fields, and overrides reduced to what differs from the variant."""
        if self.name is not None:
            try:
                self.name = canonical(self.name)
            except ConfigError as error:
                raise ConfigError(f"model.name: {error}") from None
        for key in self.overrides:
            if key in DERIVED_FIELDS:
                raise ConfigError(f"model.{key} is set by the run; use {_DERIVED_FROM[key]} instead")
        if self.init_from:  # the checkpoint has the spec; each field is typed here, compared with it later
            named = resolve_spec(self.name) if self.name else None
            for key, value in self.overrides.items():
                owner = type(named) if named and key in type(named).model_fields else next(
                    c for c in SPECS.values() if key in c.model_fields)
                self.overrides[key] = check_field(owner, key, value)
            return
        if self.name is None:
            return
        spec, base = resolve_spec(self.name, self.overrides), resolve_spec(self.name)
        defaults = {k: to_jsonable_python(f.default) for k, f in type(spec).model_fields.items() if not f.is_required()}
        defaults.update(base.model_dump(mode="json"))  # a hybrid made from a ViT name: its own defaults otherwise
        self.overrides = {k: v for k, v in spec.model_dump(mode="json", exclude={"family"}).items()
                          if k not in defaults or v != defaults[k]}


_DERIVED_FROM = {"num_classes": "the dataset's classes", "img_size": "data.img_size", "in_chans": "data.in_chans"}


class DataSection(_Section):
    dataset: str = "fashion_mnist"  # a vitlab.data source name
    options: dict[str, Any] = Field(default_factory=dict)  # source options, e.g. {"root": "/data/pets"}
    train_split: str = "train"
    test_split: Optional[str] = "test"  # None: no test evaluation
    img_size: Optional[PositiveInt] = None  # None: the model's default resolution
    in_chans: Optional[PositiveInt] = None  # None: the source's channels
    augment: str = "none"  # a vitlab.data augmentation level
    num_workers: Count = 0
    # Share of the training split held out as a dev split (selection / best checkpoint). None: the paper's
    # fraction for the dataset during a fine-tuning sweep (recipes.DEV_FRACTION), otherwise no dev split.
    dev_fraction: Optional[Rate] = None
    exclusions: Optional[str] = None  # file of training indices to drop (vitlab dedup); pre-training only
    eval_batch_size: PositiveInt = 256


class OptimSection(_Section):
    """Optimiser and learning-rate schedule.

    ``weight_decay`` is decoupled and multiplied by the current learning rate, as in torch's AdamW and in the
    Flax optimiser of the paper's code: each step does ``w <- w - lr_t * weight_decay * w`` on weight matrices
    only. Table 3's values (0.1 JFT, 0.03 ImageNet-21k, 0.3 ImageNet) are used as they are. (big_vision's later
    configs scale decay by the schedule only; their ``wd`` equals ``lr * weight_decay`` here.)
    """

    name: Literal["adam", "sgd"] = "adam"
    lr: Positive = 1e-3  # peak learning rate, reached after warm-up
    weight_decay: NonNegative = 0.0
    betas: tuple[Rate, Rate] = (0.9, 0.999)
    eps: Positive = 1e-8
    momentum: Rate = 0.9  # SGD only
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: Count = 0
    end_lr: NonNegative = 0.0  # where linear decay ends (the paper's ImageNet-21k runs: 1e-5)
    clip_norm: Optional[Positive] = 1.0  # clip the global gradient norm; None: no clipping


class TrainSection(_Section):
    steps: Optional[PositiveInt] = None  # optimiser steps; give this or `epochs`
    epochs: Optional[Positive] = None  # converted to steps from the training-set size and batch size
    batch_size: PositiveInt = 4096  # the effective (global) batch of the recipe
    micro_batch_size: Optional[PositiveInt] = None  # per process per forward pass; None: batch_size / world size
    # classify: supervised classification (``loss``, ``label_smoothing``); mpp: masked patch prediction, the
    # paper's self-supervised pre-training (Section 4.6; the model gets ``mpp_classes`` automatically and the
    # reported accuracies are those of predicting the corrupted patches' mean colours).
    objective: Literal["classify", "mpp"] = "classify"
    loss: Literal["softmax", "sigmoid"] = "softmax"
    label_smoothing: Rate = 0.0
    ema_decay: Rate = 0.0  # Polyak / EMA averaging of the weights; 0 = off (paper's Table 2: 0.9999)
    # auto: bf16 on GPUs that have it, fp16 (with loss scaling) on older GPUs, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto | cpu | cuda | cuda:N
    log_every: PositiveInt = 50
    eval_every: Count = 0  # evaluate on the dev (or test) split every N steps; 0: only at the end
    checkpoint_every: Count = 500  # 0: only at the end
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; bit-exact resume on GPU)
    # CPU threads for torch's kernels; null: torch's default (all cores). On a busy shared machine fewer
    # threads than cores avoids OpenMP threads waiting on each other (1 can be several times faster).
    num_threads: Optional[PositiveInt] = None
    # Recompute block activations in the backward pass to save memory: false, true (every block) or k (every
    # k-th block).
    activation_checkpointing: Union[bool, Int] = False

    @field_validator("activation_checkpointing")
    @classmethod
    def _every_kth_block(cls, value: Union[bool, int]) -> Union[bool, int]:
        if not isinstance(value, bool) and value < 1:
            raise ValueError("expected false, true or k >= 1 (every k-th block)")
        return value


class DistributedSection(_Section):
    strategy: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPU, gloo on CPU
    timeout_minutes: PositiveInt = 30
    # FSDP2 (strategy=fsdp): the MixedPrecisionPolicy's parameter and gradient-reduction dtypes, whether the
    # parameters are freed again after the forward pass, and parameters kept on the CPU.
    param_dtype: Literal["fp32", "bf16"] = "fp32"
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    # FSDP2: every rank writes its shards (torch.distributed.checkpoint); false: rank 0 writes the gathered state.
    sharded_checkpoints: bool = False


class SweepSection(_Section):
    """A grid over config keys, e.g. ``{"lr": [0.001, 0.003, 0.01, 0.03]}`` (Table 4's learning rates).

    Each value trains one sub-run on train minus the dev split; the best dev accuracy wins. With ``refit``
    the winner is trained again on the whole training split and its test accuracy is reported (the paper,
    Appendix B.1.1); without, the winning sub-run's own weights are tested.
    """

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    refit: bool = True


class RunConfig(_Section):
    task: Literal["pretrain", "finetune"] = "pretrain"
    seed: Int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    sweep: SweepSection = Field(default_factory=SweepSection)

    # ---- building ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, tree: Mapping[str, Any], *, origin: str = "config") -> "RunConfig":
        """A validated config from a nested mapping (what a YAML file holds)."""
        return _build([(origin, _flatten(tree, origin))]).validate()

    def override(self, overrides: Iterable[str] | Mapping[str, Any] = ()) -> "RunConfig":
        """A new, validated config with ``key=value`` strings (or a ``{key: value}`` mapping) applied."""
        return _build([("override", parse_overrides(overrides))], start=self).validate()

    # ---- reading ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain data with the model written out: ``name``, ``family`` and every field of the spec."""
        tree = self.model_dump(mode="json")
        model = tree.pop("model")
        spec = self.model.spec
        fields = {"family": spec.family, **spec.model_dump(mode="json", exclude={"family"})} if spec else {}
        tree["model"] = {"name": model["name"], "init_from": model["init_from"], **fields, **model["overrides"]}
        return {key: tree[key] for key in type(self).model_fields}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def get(self, key: str) -> Any:
        """The value at a dotted key (aliases allowed): ``cfg.get("lr")``."""
        section, name, rest = _resolve_key(key, "get")
        if not section:
            return getattr(self, name)
        target = getattr(self, section)
        if section == "model" and name not in ModelSection.model_fields:
            spec = target.spec
            return getattr(spec, name, None) if spec is not None else target.overrides.get(name)
        value = getattr(target, name)
        return value.get(rest) if rest else value

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
    def validate(self, check_model: bool = True) -> "RunConfig":  # type: ignore[override]
        """The rules that tie several keys together (each field's own range is checked on assignment)."""
        o, t = self.optim, self.train
        if o.end_lr > o.lr:
            raise ConfigError(f"optim.end_lr={o.end_lr} is above optim.lr={o.lr}; give a number in [0, {o.lr}]")
        if t.steps is not None and t.epochs is not None:
            raise ConfigError("train.steps and train.epochs are both set; give only one")
        if t.steps is None and t.epochs is None:
            raise ConfigError("neither train.steps nor train.epochs is set; give one (e.g. train.steps=1000)")
        if t.steps is not None and o.warmup_steps > t.steps:
            raise ConfigError(
                f"optim.warmup_steps={o.warmup_steps} is longer than train.steps={t.steps}; lower it as well "
                f"(e.g. optim.warmup_steps={t.steps // 10}, a tenth of the run)"
            )
        if t.micro_batch_size is not None and t.batch_size % t.micro_batch_size:
            raise ConfigError(
                f"train.micro_batch_size={t.micro_batch_size} does not divide train.batch_size={t.batch_size}"
            )
        if t.objective == "mpp" and self.task != "pretrain":
            raise ConfigError("train.objective=mpp is a pre-training objective; fine-tune its checkpoint with "
                              "train.objective=classify")
        if self.distributed.strategy == "fsdp" and t.ema_decay > 0:
            raise ConfigError("train.ema_decay needs distributed.strategy=ddp (EMA of FSDP shards is not supported)")
        for key, values in self.sweep.grid.items():
            _check_sweep_entry(self, key, values)
        if check_model:
            self._check_model()
        return self

    def _check_model(self) -> None:
        """Build the model on the meta device (no memory, no time) so bad sizes fail before training."""
        spec = self.model.spec
        if spec is None:
            return  # the architecture comes from init_from; checked when the file is read
        import torch

        try:
            with torch.device("meta"):
                build_spec(spec, num_classes=10, img_size=self.data.img_size or DEFAULT_IMG_SIZE,
                           in_chans=self.data.in_chans or 3)
        except VitlabError as error:
            where = "data.img_size" if "divisible" in str(error) else "model"
            raise ConfigError(f"{where}: {error}") from None


# ---- presets ------------------------------------------------------------------------------------------------
def list_presets() -> list[str]:
    """Names of the packaged presets (``vitlab pretrain --config NAME``)."""
    root = resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    entry = resources.files(PRESET_PACKAGE) / f"{name}.yaml"
    if not entry.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=4, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; presets: {', '.join(list_presets())}"
        raise ConfigError(f"--config {name!r} is neither a file nor a preset{hint}")
    return entry.read_text()


def load_config(preset_or_path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()) -> RunConfig:
    """A validated config from a preset name or a YAML file (after its ``base`` chain), then overrides."""
    layers = _read_layers(str(preset_or_path), seen=())
    return _build(layers + [("override", parse_overrides(overrides))]).validate()


Layer = tuple[str, list[tuple[str, Any]]]  # (where the pairs come from, the (key, value) pairs)


def _read_layers(ref: str, seen: tuple[str, ...], relative_to: Path | None = None) -> list[Layer]:
    """The ``(key, value)`` pairs of a preset / file, after those of its ``base`` chain (base first)."""
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
    own = [(ref, _flatten(tree, ref))]
    if base is None:
        return own
    parent_dir = here if here and (here / str(base)).is_file() else None
    return _read_layers(str(base), seen + (ref,), parent_dir) + own


# ---- keys ---------------------------------------------------------------------------------------------------
_SECTIONS: dict[str, type[BaseModel]] = {name: RunConfig.model_fields[name].annotation  # type: ignore[misc]
                                         for name in ("model", "data", "optim", "train", "distributed", "sweep")}
_TOP_LEVEL = ("task", "seed")
# Fields that are free-form mappings: a dotted key below them is an entry, not a field.
_OPEN_DICTS: dict[str, set[str]] = {"data": {"options"}, "sweep": {"grid"}}


def _field_names(section: str) -> list[str]:
    return [name for name in _SECTIONS[section].model_fields if name != "overrides"]


def _aliases() -> dict[str, list[str]]:
    """Bare field name -> every dotted key that has it (an alias works when the list has one entry)."""
    table: dict[str, list[str]] = {}
    for section in _SECTIONS:
        for name in _field_names(section):
            table.setdefault(name, []).append(f"{section}.{name}")
    return table


def all_keys() -> list[str]:
    """Every fixed dotted key (for error messages and docs)."""
    return list(_TOP_LEVEL) + [f"{section}.{name}" for section in _SECTIONS for name in _field_names(section)]


def _resolve_key(key: str, origin: str) -> tuple[str, str, str]:
    """``(section, field, rest)`` for a dotted or alias key; section "" for top-level fields."""
    if key in _TOP_LEVEL:
        return "", key, ""
    head, _, tail = key.partition(".")
    if head in _SECTIONS and tail:
        name, _, rest = tail.partition(".")
        if head == "model" and name not in ModelSection.model_fields:
            known = all_field_names() | set(DERIVED_FIELDS) | {"family"}
            if name in known and not rest:
                return "model", name, ""  # a field of the model spec, typed when the spec is resolved
            close = difflib.get_close_matches(name, sorted(known | {"name", "init_from"}), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join('model.' + c for c in close)}?" if close else (
                "; model fields: " + ", ".join(sorted(all_field_names())))
            raise ConfigError(f"{origin}: unknown key {key!r}{hint}")
        if name not in _field_names(head):
            close = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys in {head}: " + ", ".join(
                f"{head}.{n}" for n in _field_names(head))
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
        if key in all_field_names():
            raise ConfigError(f"{origin}: unknown key {key!r}; model fields take the prefix: model.{key}")
    close = difflib.get_close_matches(key, all_keys() + list(_aliases()), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see docs/training.md for the keys"
    raise ConfigError(f"{origin}: unknown key {key!r}{hint}")


def canonical_key(key: str) -> str:
    """``lr`` -> ``optim.lr``; raises ConfigError for an unknown key."""
    return ".".join(part for part in _resolve_key(key, "key") if part)


# ---- building -----------------------------------------------------------------------------------------------
def _build(layers: list[Layer], start: RunConfig | None = None) -> RunConfig:
    """Apply layers of ``(key, value)`` pairs to ``start`` (or the defaults) and validate the result.

    In each layer a ``model.name`` comes first and clears the model fields of the layers before it.
    """
    tree = (start or RunConfig()).model_dump()
    family = None  # config.yaml records the family; it must be the one that the name and fields give
    for origin, pairs in layers:
        resolved = [(_resolve_key(key, origin), value) for key, value in pairs]
        for (section, name, _), value in resolved:
            if (section, name) == ("model", "name"):
                tree["model"].update(name=value, overrides={})
            family = value if (section, name) == ("model", "family") else family
        for (section, name, rest), value in resolved:
            if (section, name) != ("model", "name"):
                _set(tree, section, name, rest, value, ".".join(p for p in (section, name, rest) if p))
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(one_line(error)) from None
    cfg.model._resolve()
    spec = cfg.model.spec
    if family is not None and spec is not None and family != spec.family:
        raise ConfigError(f"model.family={family} but model.name={cfg.model.name} with its fields "
                          f"is a {spec.family} model")
    return cfg


def _set(tree: dict[str, Any], section: str, name: str, rest: str, value: Any, key: str) -> None:
    if not section:
        tree[name] = value
    elif section == "model" and name not in ModelSection.model_fields:
        if isinstance(value, str):  # model fields are numbers, booleans or names: "6" from Python means 6
            value = _parse_scalar(value)
        if name != "family":
            tree["model"]["overrides"][name] = value
    elif name in _OPEN_DICTS.get(section, set()):
        if rest:
            tree[section][name][rest] = _as_list(value, key) if section == "sweep" else value
        elif value is None or isinstance(value, Mapping):
            tree[section][name] = {str(k): (_as_list(v, f"{key}.{k}") if section == "sweep" else v)
                                   for k, v in (value or {}).items()}
        else:
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
    else:
        tree[section][name] = value


def _flatten(tree: Mapping[str, Any], origin: str) -> list[tuple[str, Any]]:
    """Nested mapping -> dotted ``(key, value)`` pairs; free-form mappings stay whole."""
    pairs: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if key in _SECTIONS and isinstance(value, Mapping):
            pairs += [(f"{key}.{name}", item) for name, item in value.items()]
        elif key in _SECTIONS and value is not None:
            raise ConfigError(f"{origin}: section {key!r} must be a mapping, got {value!r}")
        elif isinstance(value, Mapping):
            raise ConfigError(f"{origin}: unknown config section {key!r}; sections: {', '.join(_SECTIONS)}")
        elif key not in _SECTIONS:
            pairs.append((str(key), value))
    return pairs


def _check_sweep_entry(cfg: RunConfig, key: str, values: list[Any]) -> None:
    """Every value a sweep will try must itself be a valid override."""
    if not values:
        raise ConfigError(f"sweep.grid.{key} is empty; give at least one value")
    plain = cfg.model_copy(update={"sweep": SweepSection()})
    for value in values:
        try:
            _build([("sweep.grid", [(key, value)])], start=plain).validate(check_model=False)
        except ConfigError as error:
            raise ConfigError(f"sweep.grid.{key}: {error}".replace(": sweep.grid: ", ": ")) from None


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and "," in value:
        return [_parse_scalar(part.strip()) for part in value.split(",") if part.strip()]
    return [value]


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``["optim.lr=0.01", ...]`` (or a mapping) -> ``[("optim.lr", 0.01), ...]``, values read as YAML."""
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=0.01)")
        key, _, text = item.partition("=")
        if not key.strip():
            raise ConfigError(f"override {item!r} has no key")
        pairs.append((key.strip(), _parse_scalar(text.strip()) if text.strip() else None))
    return pairs
