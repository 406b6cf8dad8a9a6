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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
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
            raise PydanticCustomError("tf_auto_or_number", "{name} must be 'auto' or {noun} {relation} {low}",
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
    _label = "field"  # how the message calls one of this model's keys

    @model_validator(mode="after")
    def _no_unknown_keys(self):
        extra = sorted(self.model_extra or {})
        if extra:
            known = ", ".join(type(self).model_fields)
            raise PydanticCustomError("tf_unknown_field", "unknown {label} {field}; known: {known}",
                                      {"field": extra[0], "known": known, "label": self._label})
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
            raise PydanticCustomError("tf_method_type", "method.type {value} is not supported; use one of {known}",
                                      {"value": repr(value), "known": ", ".join(HYPERPARAMETER_MODELS)})
        return value

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter_names_a_method(cls, value):
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("name"), str)):
            raise PydanticCustomError("tf_method_adapter", 'method.adapter must be an object with a name, such as '
                                      '{{"name": "lora", "r": 16}}')
        return value

    @model_validator(mode="after")
    def _only_its_own_section(self):
        given = [*(self.model_extra or {}), *(k for k in HYPERPARAMETER_MODELS if getattr(self, k) is not None)]
        for key in given:
            if key != self.type:
                raise PydanticCustomError("tf_unknown_field", "unknown field in method: {field}", {"field": key})
        return self

    def section(self) -> TypeSection:
        """method.<type>, empty when not given."""
        return getattr(self, self.type) or (ReinforcementSection() if self.type == "reinforcement" else TypeSection())


class WandbSettings(_Strict):
    """`integrations[i].wandb`: where the job's W&B run goes (train.wandb of the run config)."""

    _label = "wandb field"

    project: Any = Field(None, validate_default=True)
    name: str | None = None
    entity: str | None = None
    tags: Any = None

    @field_validator("project")
    @classmethod
    def _project(cls, value):
        if not isinstance(value, str) or not value:
            raise PydanticCustomError("tf_wandb_project", "a wandb integration needs wandb.project (a string)")
        return value

    @field_validator("name", "entity", mode="before")
    @classmethod
    def _text(cls, value, info: ValidationInfo):
        if value is not None and not isinstance(value, str):
            raise PydanticCustomError("tf_wandb_field", "wandb.{name} must be a string", {"name": info.field_name})
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value):
        if value is not None and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            raise PydanticCustomError("tf_wandb_field", "wandb.tags must be a list of strings")
        return value


class Integration(_Strict):
    """One of OpenAI's `integrations`; only W&B is supported and anything else is refused by name."""

    _label = "field in integration:"

    type: Any = Field(None, validate_default=True)
    wandb: WandbSettings | None = Field(None, validate_default=True)

    @field_validator("type")
    @classmethod
    def _wandb_only(cls, value):
        if value != "wandb":
            raise PydanticCustomError("tf_integration_type", "integration type {value} is not supported; "
                                      "supported: wandb", {"value": repr(value)})
        return value

    @field_validator("wandb", mode="before")
    @classmethod
    def _settings(cls, value):
        if not isinstance(value, dict):
            raise PydanticCustomError("tf_wandb_project", "a wandb integration needs wandb.project (a string)",
                                      {"field": "project"})
        return value


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
    integrations: list[Integration] | None = None

    @field_validator("integrations", mode="before")
    @classmethod
    def _integration_list(cls, value):
        if value is not None and not isinstance(value, list):
            raise PydanticCustomError("tf_integrations", 'integrations must be a list such as [{{"type": "wandb", '
                                      '"wandb": {{...}}}}]')
        if isinstance(value, list) and len(value) > 1:
            raise PydanticCustomError("tf_integrations", "at most one wandb integration per job", {"field": 1})
        return value

    @field_validator("model")
    @classmethod
    def _served_base(cls, value: str, info: ValidationInfo) -> str:
        bases = (info.context or {}).get("base_names", ())
        if value not in bases:
            raise PydanticCustomError("tf_model", "model {value} cannot be fine-tuned here; this server fine-tunes "
                                      "its base model {base}",
                                      {"value": repr(value), "base": repr(bases[0] if bases else "")})
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value):
        if value is not None and not SUFFIX.match(value):
            raise PydanticCustomError("tf_suffix", "suffix may hold letters, digits, '_' and '-' (1 to 40 characters)")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise PydanticCustomError("tf_seed", "seed must be a non-negative integer")
        return value


def first_error(err: ValidationError, prefix: str = "") -> tuple[str | None, str]:
    """(dotted field, message) of a validation error's first problem, the field as the client wrote it (the same
    rule as the app's handler for the inference bodies; `prefix` is where the validated dict sits)."""
    from .http_errors import describe_validation_error

    problem = err.errors(include_url=False)[0]
    problem = {**problem, "loc": (*([prefix] if prefix else []), *problem["loc"])}
    key, message = describe_validation_error([problem])
    ctx = problem.get("ctx") or {}
    if problem["type"] == "tf_unknown_field" and "known" in ctx:
        message = f"unknown {ctx.get('label', 'field')} {key}; known: {ctx['known']}"
    return key, message
