"""The body of `POST /v1/fine_tuning/jobs` as pydantic models (FastAPI's own validation library): the request's
shape, types and ranges are declared here, and every error names its field as the client wrote it
(`hyperparameters.n_epochs`, `method.adapter.r`). jobspec.py maps a valid request onto a run config.

Each method type is a field of `method` (supervised, dpo, reinforcement), so its section is declared like the rest.
Messages are ours where pydantic's would be vague (`n_epochs must be 'auto' or an integer >= 1`); an unknown field
is refused rather than ignored inside `method` and the hyperparameters, where a typo would silently train with a
default. Unknown top-level fields are ignored, as OpenAI's API adds fields clients may send.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic import model_validator
from pydantic_core import PydanticCustomError

SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
AUTO = "auto"


def _auto_or_number(kind: type, low: float, strict: bool = False):
    """'auto' (or null), else a finite number of `kind` above `low` (strictly with strict); our message."""

    def check(value: Any, info: ValidationInfo):
        if value is None or value == AUTO:
            return AUTO
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (kind is int and value != int(value)) or value < low or (strict and value == low):
            relation = ">" if strict else ">="
            noun = "an integer" if kind is int else "a finite number"
            raise PydanticCustomError("auto_or_number", "{name} must be 'auto' or {noun} {relation} {low}",
                                      {"name": info.field_name, "noun": noun, "relation": relation,
                                       "low": f"{low:g}"})
        return kind(value)

    return BeforeValidator(check)


Epochs = Annotated[Union[Literal["auto"], int], _auto_or_number(int, 1)]
BatchSize = Annotated[Union[Literal["auto"], int], _auto_or_number(int, 1)]
Positive = Annotated[Union[Literal["auto"], float], _auto_or_number(float, 0, strict=True)]


class _Strict(BaseModel):
    """Unknown keys are errors naming the key (a typo must not train with a silent default)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _no_unknown_keys(self):
        extra = sorted(self.model_extra or {})
        if extra:
            known = ", ".join(type(self).model_fields)
            raise PydanticCustomError("unknown_field", "unknown field {field}; known: {known}",
                                      {"field": extra[0], "known": known})
        return self


class SupervisedHyperparameters(_Strict):
    n_epochs: Epochs = AUTO
    batch_size: BatchSize = AUTO
    learning_rate_multiplier: Positive = AUTO


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Positive = AUTO


class ReinforcementHyperparameters(SupervisedHyperparameters):
    eval_interval: Annotated[Union[Literal["auto"], int], _auto_or_number(int, 0)] = AUTO


HYPERPARAMETER_MODELS: dict[str, type[SupervisedHyperparameters]] = {
    "supervised": SupervisedHyperparameters, "dpo": DpoHyperparameters,
    "reinforcement": ReinforcementHyperparameters}


class TypeSection(_Strict):
    """`method.<type>`: OpenAI's newer place for the hyperparameters (values checked once merged with the
    top-level ones)."""

    hyperparameters: dict[str, Any] | None = None


class ReinforcementSection(TypeSection):
    """`method.reinforcement`: the grader as well (turned into GRPO rewards by serve/graders.py)."""

    grader: dict[str, Any] | None = None


class MethodRequest(BaseModel):
    """`method`: the type (supervised, dpo), its section, and tuneforge's `adapter` (the method section of a run
    config, checked by the method's own config class in jobspec)."""

    model_config = ConfigDict(extra="allow")

    type: str = "supervised"
    adapter: dict[str, Any] | None = None
    supervised: TypeSection | None = None
    dpo: TypeSection | None = None
    reinforcement: ReinforcementSection | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in HYPERPARAMETER_MODELS:
            raise PydanticCustomError("method_type", "method.type {value!r} is not supported; use one of {known}",
                                      {"value": value, "known": ", ".join(HYPERPARAMETER_MODELS)})
        return value

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter_names_a_method(cls, value):
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("name"), str)):
            raise PydanticCustomError("method_adapter", 'method.adapter must be an object with a name, such as '
                                      '{{"name": "lora", "r": 16}}')
        return value

    @model_validator(mode="after")
    def _only_its_own_section(self):
        given = [*(self.model_extra or {}), *(k for k in HYPERPARAMETER_MODELS if getattr(self, k) is not None)]
        for key in given:
            if key != self.type:
                raise PydanticCustomError("unknown_field", "unknown field in method: {field}", {"field": key})
        return self

    def section(self) -> TypeSection:
        """method.<type>, empty when not given."""
        return getattr(self, self.type) or (ReinforcementSection() if self.type == "reinforcement" else TypeSection())


class JobRequest(BaseModel):
    """The request body; `context={"base_names": (...)}` says which model ids may be fine-tuned."""

    model_config = ConfigDict(extra="ignore")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    hyperparameters: dict[str, Any] | None = None
    method: MethodRequest | None = None
    metadata: dict[str, Any] | None = None
    integrations: Any = None  # checked by jobspec.parse_integrations

    @field_validator("model")
    @classmethod
    def _served_base(cls, value: str, info: ValidationInfo) -> str:
        bases = (info.context or {}).get("base_names", ())
        if value not in bases:
            raise PydanticCustomError("model", "model {value!r} cannot be fine-tuned here; this server fine-tunes "
                                      "its base model {base!r}", {"value": value, "base": bases[0] if bases else ""})
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value):
        if value is not None and not SUFFIX.match(value):
            raise PydanticCustomError("suffix", "suffix may hold letters, digits, '_' and '-' (1 to 40 characters)")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise PydanticCustomError("seed", "seed must be a non-negative integer")
        return value


OUR_ERRORS = ("auto_or_number", "unknown_field", "method_type", "method_adapter", "model", "suffix", "seed")


def first_error(err: ValidationError, prefix: str = "") -> tuple[str | None, str]:
    """(dotted field, message) of a validation error's first problem, the field as the client wrote it. Our own
    messages read as they are; pydantic's generic ones ("Field required") get the field in front."""
    problem = err.errors(include_url=False)[0]
    ctx = problem.get("ctx") or {}
    parts = [str(p) for p in problem["loc"]]
    if problem["type"] == "unknown_field":
        parts.append(str(ctx["field"]))
    key = ".".join(p for p in [prefix, *parts] if p) or None
    if problem["type"] == "unknown_field" and "known" in ctx:
        return key, f"unknown field {key}; known: {ctx['known']}"
    if problem["type"] in OUR_ERRORS:
        return key, problem["msg"]
    return key, f"{key}: {problem['msg']}" if key else problem["msg"]
