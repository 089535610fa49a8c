"""Typed model specs: what a model name means, written out field by field.

A registry name (``vit_b4``, ``bit_r50x1``, ``r50_vit_b16``, or the paper's ``ViT-B/16``) is shorthand for one
spec per family: :class:`ViTSpec`, :class:`HybridSpec` (a ViT on a ResNet's feature map) or :class:`BiTSpec`.
:func:`resolve_spec` expands the name and applies field overrides on top, so the run config, ``config.yaml`` and
``summary.json`` carry the explicit network rather than a label with an untyped dictionary beside it.

The specs hold the architecture and its regularisation; what the data decides (``img_size``, ``in_chans``,
``num_classes``) is not part of a spec. Types, ranges and choices are declared here once (pydantic), with the
choices taken from the model modules that implement them.
"""
from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.hybrid import NUMERICS
from vitlab.models.posemb import POSEMB_KINDS
from vitlab.models.registry import (
    BIT_DEPTHS, HYBRID_STAGES, VIT_SIZES, build_from_config, canonical_name, model_spec,
)
from vitlab.models.vit import CLASSIFIERS, GELU_KINDS

# Fields a run derives from its data; a spec never holds them.
DERIVED_FIELDS = ("img_size", "in_chans", "num_classes")



def _number(value: Any) -> Any:
    """YAML reads ``1e3`` as a string and ``true`` as a bool: take whole numbers written as floats, refuse bools."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # pydantic names the type it wanted
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    return value


Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number)]
PositiveInt = Annotated[Int, Field(gt=0)]
Rate = Annotated[Float, Field(ge=0.0, lt=1.0)]


class BaseSpec(BaseModel):
    """What every family's spec shares: frozen, unknown fields refused, its shape fields and its builder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Fields that fix parameter shapes: a name must agree with a checkpoint on these.
    STRUCTURE: ClassVar[tuple[str, ...]] = ()
    # The registry family that builds it (vitlab.models.registry.build_from_config).
    BUILD_FAMILY: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        """The family config's fields (without ``family``), e.g. for ``create_model(name, **spec.fields())``."""
        return self.model_dump(exclude={"family"})

    def structure(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STRUCTURE}


class ViTSpec(BaseSpec):
    """A plain ViT (Section 3.1): patches cut from the pixels. Table 1's sizes are in the registry."""

    STRUCTURE: ClassVar[tuple[str, ...]] = ("patch_size", "width", "depth", "mlp_dim", "num_heads", "classifier",
                                            "qkv_bias")
    BUILD_FAMILY: ClassVar[str] = "vit"

    family: Literal["vit"] = "vit"
    patch_size: PositiveInt = 16
    width: PositiveInt = 768
    depth: PositiveInt = 12
    mlp_dim: PositiveInt = 3072
    num_heads: PositiveInt = 12
    classifier: Literal[CLASSIFIERS] = "token"  # type: ignore[valid-type]
    posemb: Literal[POSEMB_KINDS] = "learned"  # type: ignore[valid-type]
    representation_size: Optional[PositiveInt] = None
    dropout: Rate = 0.0
    attn_dropout: Rate = 0.0
    drop_path: Rate = 0.0
    gelu: Literal[GELU_KINDS] = "tanh"  # type: ignore[valid-type]
    ln_eps: Float = Field(1e-6, gt=0)
    qkv_bias: bool = True
    mpp_classes: Int = Field(0, ge=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ViTSpec":
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
        return self


class HybridSpec(ViTSpec):
    """A ViT whose tokens are cut from a ResNet's feature map (Section 3.1, "Hybrid Architecture")."""

    STRUCTURE: ClassVar[tuple[str, ...]] = ViTSpec.STRUCTURE + ("hybrid_layers", "hybrid_width")

    family: Literal["hybrid"] = "hybrid"  # type: ignore[assignment]
    hybrid_layers: tuple[PositiveInt, ...]  # ResNet units per stage; () = the ResNet's root alone (stride 4)
    hybrid_width: PositiveInt = 64
    ws_eps: Float = Field(1e-5, gt=0)
    ws_style: Literal[tuple(NUMERICS)] = "official"  # type: ignore[valid-type]


class BiTSpec(BaseSpec):
    """A BiT ResNet-v2 (Kolesnikov et al. 2020), the paper's CNN baseline."""

    STRUCTURE: ClassVar[tuple[str, ...]] = ("layers", "width_factor", "stem_width")
    BUILD_FAMILY: ClassVar[str] = "bit"

    family: Literal["bit"] = "bit"
    layers: tuple[PositiveInt, ...] = Field((3, 4, 6, 3), min_length=1, max_length=4)
    width_factor: PositiveInt = 1
    stem_width: PositiveInt = 64
    gn_groups: PositiveInt = 32
    gn_eps: Float = Field(1e-5, gt=0)
    ws_eps: Float = Field(1e-10, gt=0)


ModelSpec = Annotated[Union[ViTSpec, HybridSpec, BiTSpec], Field(discriminator="family")]
SPECS: dict[str, type[BaseSpec]] = {"vit": ViTSpec, "hybrid": HybridSpec, "bit": BiTSpec}


def all_field_names() -> set[str]:
    """Every field of every family (``model.<field>`` keys are checked against these before a family is known)."""
    return {name for cls in SPECS.values() for name in cls.model_fields if name != "family"}


def family_of(build_family: str, fields: dict[str, Any]) -> str:
    """``vit`` / ``hybrid`` / ``bit``: a ViT with ``hybrid_layers`` (even empty) is a hybrid."""
    if build_family == "vit" and fields.get("hybrid_layers") is not None:
        return "hybrid"
    return build_family


def spec_from_fields(family: str, fields: dict[str, Any], where: str = "model") -> BaseSpec:
    """A validated spec of ``family`` (vit, hybrid, bit); a bad field is a one-line ConfigError naming it."""
    cls = SPECS[family]
    data = {k: v for k, v in fields.items() if k not in DERIVED_FIELDS and k != "family"}
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        valid = [n for n in cls.model_fields if n != "family"]
        close = difflib.get_close_matches(unknown[0], valid, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(f'{where}.{c}' for c in close)}?" if close else (
            "; set model.hybrid_layers to make it a hybrid" if unknown[0] in HybridSpec.model_fields
            else f"; {family} fields: {', '.join(valid)}")
        raise ConfigError(f"{where}.{unknown[0]} is not a field of a {family} model{hint}")
    try:
        return cls(**data)
    except ValidationError as error:
        raise ConfigError(one_line(error, prefix=where)) from None


def check_field(cls: type[BaseSpec], key: str, value: Any) -> Any:
    """One field of a spec class, typed and range-checked on its own (``model.drop_path=0.1`` for a checkpoint)."""
    info = cls.model_fields[key]
    try:
        return TypeAdapter(Annotated[(info.annotation, *info.metadata)]).validate_python(value)
    except ValidationError as error:
        raise ConfigError(one_line(error, prefix=f"model.{key}")) from None


def split_structure(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields that fix parameter shapes, the others)``: fine-tuning changes only the others."""
    shaping = {name for cls in SPECS.values() for name in cls.STRUCTURE}
    return ({k: v for k, v in fields.items() if k in shaping}, {k: v for k, v in fields.items() if k not in shaping})


def resolve_spec(name: str, overrides: dict[str, Any] | None = None) -> BaseSpec:
    """The registry variant ``name`` with ``overrides`` applied: ``resolve_spec("vit_b4", {"depth": 6})``."""
    build_family, fields = model_spec(name)
    fields = {**fields, **(overrides or {})}
    return spec_from_fields(family_of(build_family, fields), fields)


def spec_of_model(model: nn.Module) -> BaseSpec:
    """The spec of a built model (from its config), e.g. a checkpoint's."""
    fields = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(vars(model.config))
    build_family = getattr(model, "family")
    if family_of(build_family, fields) == "vit":  # a plain ViT's config also carries the hybrid's ResNet options
        fields = {k: v for k, v in fields.items() if k not in ("hybrid_layers", "hybrid_width", "ws_eps", "ws_style")}
    return spec_from_fields(family_of(build_family, fields), fields)


def build_spec(spec: BaseSpec, *, num_classes: int, img_size: int | tuple[int, int], in_chans: int = 3) -> nn.Module:
    """The model a spec describes, for the data's classes, resolution and channels."""
    return build_from_config(spec.BUILD_FAMILY, {**spec.fields(), "num_classes": num_classes,
                                                   "img_size": img_size, "in_chans": in_chans})


def variant_name(spec: BaseSpec) -> str | None:
    """The registry name whose structure ``spec`` has (``vit_b16``, ``r50_vit_b16``, ``bit_r50x1``), else None."""
    if isinstance(spec, BiTSpec):
        depth = next((d for d, units in BIT_DEPTHS.items() if units == spec.layers), None)
        candidate = f"bit_r{depth}x{spec.width_factor}" if depth else None
    elif isinstance(spec, HybridSpec):
        stride = next((s for s, units in HYBRID_STAGES.items() if units == spec.hybrid_layers), None)
        size = next((k for k, v in VIT_SIZES.items() if v["width"] == spec.width), None)
        candidate = f"r50_vit_{size}{stride}" if stride and size else None
    else:
        size = next((k for k, v in VIT_SIZES.items() if v["width"] == spec.width), None)
        candidate = f"vit_{size}{spec.patch_size}" if size else None
    if candidate and resolve_spec(candidate).structure() == spec.structure():
        return candidate
    return None


def run_label(name: str | None, spec: BaseSpec, init_from: str | None = None) -> str:
    """The variant name a run reports: ``model.name``, else the registry name of the network, else the reference."""
    return name or variant_name(spec) or str(init_from)


def check_against_checkpoint(name: str | None, fields: dict[str, Any], checkpoint: BaseSpec, init_from: str) -> None:
    """With ``model.init_from``, a ``model.name`` and shape fields must describe the checkpoint's network."""
    expected = resolve_spec(name, fields) if name else None
    if expected is not None and expected.family != checkpoint.family:
        raise ConfigError(f"model.name={name} is a {expected.family} model but model.init_from={init_from} holds a "
                          f"{checkpoint.family} model; set model.name=null (the checkpoint carries its architecture)")
    wanted = expected.structure() if expected is not None else fields
    have = checkpoint.model_dump(mode="json")
    differ = [f"{key}={have.get(key)!r} (config: {value!r})" for key, value in
              TypeAdapter(dict[str, Any]).dump_python(wanted, mode="json").items() if have.get(key) != value]
    if differ:
        what = f"model.name={name}" if name else "the model fields"
        raise ConfigError(f"{what} contradicts model.init_from={init_from}, which has {', '.join(differ)}; "
                          "drop them (the checkpoint carries its architecture)")


def canonical(name: str) -> str:
    """The registry's spelling of a name (``ViT-B/16`` -> ``vit_b16``); an unknown name is a ConfigError."""
    model_spec(name)
    return canonical_name(name)


_UNION_TAG = re.compile(r"^(bool|int|float|str|none|.*\[.*)$")


def one_line(error: ValidationError, prefix: str = "") -> str:
    """The first problem of a pydantic ValidationError as ``key=value is invalid: reason`` (one line, no dump)."""
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"] if not _UNION_TAG.match(str(part))]  # drop union members' tags
    key = ".".join(p for p in (prefix, *loc) if p) or "value"
    reason = first["msg"].removeprefix("Value error, ")
    reason = reason[:1].lower() + reason[1:]
    if first["type"] == "missing":
        return f"{key} is missing"
    if not first["loc"] and isinstance(first["input"], dict):  # a rule across fields
        return f"{key}: {reason}"
    return f"{key}={first['input']!r} is invalid: {reason}"
